"""One evaluation pass over a split: accuracy, the prompt's statistics, its cost, and accuracy
under fixed input noise.

Why these belong together: every number here is measured on the same batches in one pass, so
the prompt's density, firing rate, energy and timing describe exactly the images the accuracy
was measured on, and the noisy copies of a batch reuse its labels and indices. Like the training
loop it knows nothing of Ray, MLflow or Optuna; ranks of a DDP run are summed with one all-reduce.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, Self

import torch
import torch.distributed as dist
from torch import Tensor

from lorsp.data.seeding import mix
from lorsp.model import PromptedClassifier
from lorsp.noise import add_noise, standard_normal

#: ``mix(eval.noise_seed, stream)``: the validation and the test images get unrelated noise fields.
NOISE_STREAMS = {"val": 1, "test": 2}


class EvalContext(Protocol):
    device: torch.device
    rank: int
    world_size: int


@dataclass(frozen=True)
class NoiseSpec:
    """Gaussian pixel noise levels (std in [0, 1] pixel units) and the seed of the noise field."""

    levels: tuple[float, ...]
    seed: int


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when enabled; nothing elsewhere (CPU bf16 is slower and lossy)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PromptTimer:
    """Wall time of the prompter alone, per batch, without a host sync per batch.

    Hooks on the prompter bracket its forward inside the whole model's, so the model is called as
    usual; only calls made inside :meth:`armed` count (the clean pass, not the noisy copies). On
    CUDA each call is bracketed by two events, read after one synchronisation at the end, so
    evaluation keeps its pipelining; elsewhere kernels run synchronously and ``perf_counter`` is
    exact. The first batch is left out when there are others: it pays one-off costs (kernel
    compilation, allocator growth) that no later batch of a deployed prompt would.
    """

    def __init__(self, prompter: torch.nn.Module, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._armed = False
        self._start: Any = None
        self._events: list[tuple[Any, Any]] = []
        self._seconds: list[float] = []
        self._hooks = [prompter.register_forward_pre_hook(self._before),
                       prompter.register_forward_hook(self._after)]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def _before(self, module: torch.nn.Module, args: Any) -> None:
        if not self._armed:
            return
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def _after(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        if not self._armed:
            return
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        else:
            self._seconds.append(time.perf_counter() - self._start)

    def total(self) -> tuple[float, int]:
        """(milliseconds summed over the timed batches, number of timed batches)."""
        if self.cuda:
            torch.cuda.synchronize()
            times = [start.elapsed_time(end) for start, end in self._events]
        else:
            times = [s * 1000.0 for s in self._seconds]
        kept = times[1:] if len(times) > 1 else times
        return float(sum(kept)), len(kept)


_STAT_NAMES = {"density": "prompt_density"}  # Prompter.stats() key -> metric name, where they differ


@torch.no_grad()
def evaluate(model: PromptedClassifier, batches: Iterator[tuple[Tensor, Tensor]], ctx: EvalContext, amp: bool,
             noise: NoiseSpec | None = None, split: str = "val") -> dict[str, Any]:
    """Metrics of one pass over this rank's shard, summed over ranks.

    Returns ``acc``; the prompter's statistics averaged per image (``prompt_density``,
    ``firing_rate`` and any other key its ``stats()`` gives, e.g. ``silent_gates``);
    ``prompt_energy_nj`` from the prompter's own operation count at the measured firing rate;
    ``prompt_ms``, the prompter's forward time per batch; and with `noise`, ``noise_acc``: one
    accuracy per level, on the same images with ``clamp(x + std·z, 0, 1)`` added *before* the
    prompt, z fixed per (seed, split, image index). The batches must be the shard
    ``split[rank::world_size]`` in order (as the training loop builds them), so that a local
    position maps to its image index in the split.
    """
    model.eval()
    device = ctx.device
    levels = noise.levels if noise is not None else ()
    noise_seed = mix(noise.seed, NOISE_STREAMS[split]) if noise is not None else 0
    sums: dict[str, Tensor] = {}
    position = 0

    def add(name: str, value: Tensor) -> None:
        value = value.detach().to(device, torch.float64)
        sums[name] = sums[name] + value if name in sums else value

    with PromptTimer(model.prompter, device) as timer:
        for x, y in batches:
            n = y.numel()
            with autocast(device, amp), timer.armed():
                logits = model(x)
            add("correct", (logits.argmax(1) == y).sum())
            add("seen", torch.tensor(float(n), device=device))
            for key, value in model.prompter.stats().items():
                add(_STAT_NAMES.get(key, key), value * n)
            if levels:
                local = torch.arange(position, position + n, device=device)
                index = ctx.rank + ctx.world_size * local  # position in the whole split
                normal = standard_normal(index, tuple(x.shape[1:]), noise_seed)
                for i, std in enumerate(levels):
                    with autocast(device, amp):
                        noisy = model(add_noise(x, normal, std))
                    add(f"noise_correct_{i}", (noisy.argmax(1) == y).sum())
            position += n
        ms, timed = timer.total()
    sums["timed_ms"] = torch.tensor(ms, dtype=torch.float64, device=device)
    sums["timed_batches"] = torch.tensor(float(timed), dtype=torch.float64, device=device)
    names = sorted(sums)
    totals = torch.stack([sums[k] for k in names])
    if ctx.world_size > 1:
        dist.all_reduce(totals)
    values = dict(zip(names, totals.tolist()))  # the one host sync of the pass
    seen = max(values.pop("seen"), 1.0)
    out: dict[str, Any] = {"acc": values.pop("correct") / seen}
    out["noise_acc"] = [values.pop(f"noise_correct_{i}") / seen for i in range(len(levels))]
    out["prompt_ms"] = values.pop("timed_ms") / max(values.pop("timed_batches"), 1.0)
    out.update({k: v / seen for k, v in values.items()})
    out["prompt_energy_nj"] = model.prompter.energy_ops(out["firing_rate"]).nanojoules()
    return out
