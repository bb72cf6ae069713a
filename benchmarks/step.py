"""Training-step cost of every prompt method through the real model, side by side.

    python benchmarks/step.py --config cpu [--threads 1] [--rounds 7] [--reps 3]
    python benchmarks/step.py --config gpu            # ViT-B/16, 224 px, batch 128, bf16 autocast

One step = forward + backward + optimiser step of the real ``PromptedClassifier`` built by
``lorsp.model.build_model`` (the same body as ``lorsp.train.train_loop``'s inner loop: bf16
autocast on CUDA, ``channels_last`` on CUDA, SGD with momentum). All variants share one frozen
backbone and one batch and are timed interleaved (see ``_util.interleaved``).

Sections (``--sections``, default all):

* ``methods``:  none, lorvp, lorsp (K=4, T=8), spike_nvpt (T=8): step time, ratios to none and to
  lorvp, the prompt's own forward+backward and its share of the step, memory.
* ``sweep``:    LoRSP at T = 1, 4, 8, 16 and K = 1, 4 (with lorvp as the yardstick).
* ``reference``: LoRSP's fast neurons against SpikingJelly's ``LIFNode`` (``reference=True``).

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over one step (absolute peak, which holds the
backbone, and the peak minus what was allocated before the step). On CPU there is no allocator
peak counter, so two figures stand in: the bytes autograd *saves for backward* (distinct
storages, parameters and the input batch excluded; exact and load-independent), and the growth of
the process's peak RSS over one step (``/proc/self/clear_refs`` resets the peak, glibc's mmap
threshold is pinned so freed tensors leave RSS; approximate, includes transient buffers).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402

from lorsp.config import StudyConfig  # noqa: E402
from lorsp.model import PromptedClassifier, build_model  # noqa: E402
from lorsp.prompts import create_prompter  # noqa: E402
from lorsp.train import _autocast, _optimizer  # noqa: E402  (the training loop's own helpers)

CONFIGS: dict[str, dict[str, Any]] = {
    "cpu": dict(model="vit_tiny_patch16_224", kwargs={"patch_size": 4, "depth": 4}, image_size=32,
                batch_size=64, device="cpu", amp=False),
    "gpu": dict(model="vit_base_patch16_224", kwargs={}, image_size=224, batch_size=128, device="cuda",
                amp=True),
}
NUM_CLASSES = 100
PROMPT = dict(rank=4, threshold=0.5, decay=0.5, surrogate_slope=4.0)


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    factors: int = 1
    timesteps: int = 4
    reference: bool = False


def study_for(cfg: dict[str, Any], v: Variant) -> StudyConfig:
    return StudyConfig.model_validate(dict(
        name="bench",
        backbone=dict(model=cfg["model"], pretrained=False, kwargs=cfg["kwargs"]),
        data=dict(image_size=cfg["image_size"], batch_size=cfg["batch_size"]),
        prompt=dict(method=v.method, factors=v.factors, timesteps=v.timesteps, **PROMPT),
        train=dict(optimizer="sgd", lr=0.01, amp=cfg["amp"]),
    ))


def realistic(prompter: nn.Module) -> None:
    """Move LoRSP off its all-zero init so neurons fire (cost is the same; the stats are realistic)."""
    with torch.no_grad():
        if prompter.method == "lorsp":
            thr = prompter.threshold
            prompter.B.normal_(0.0, 0.5 * thr / (prompter.rank**0.5 * 0.01))  # |B·A| ~ thr / 2
            prompter.beta.fill_(thr)
        elif prompter.method == "lorvp":
            prompter.B.normal_(0.0, 1.0)
        elif prompter.method == "spike_nvpt":
            prompter.amplitude.fill_(0.05)


class Bench:
    """One variant: its model (sharing the backbone), optimiser, and the step/prompt callables."""

    def __init__(self, cfg: dict[str, Any], v: Variant, backbone: nn.Module | None, x: torch.Tensor,
                 y: torch.Tensor) -> None:
        self.variant = v
        self.device = torch.device(cfg["device"])
        self.amp = cfg["amp"]
        study = study_for(cfg, v)
        model = build_model(study, NUM_CLASSES)
        if backbone is not None:
            model.backbone = backbone  # one frozen backbone for all variants (same weights, less memory)
        if v.reference:
            ref = create_prompter(v.method, cfg["image_size"], factors=v.factors, timesteps=v.timesteps,
                                  reference=True, **PROMPT)
            ref.load_state_dict(model.prompter.state_dict())
            model.prompter = ref
        realistic(model.prompter)
        model = model.to(self.device)
        if self.device.type == "cuda":  # as train_loop does with train.channels_last (default true)
            model = model.to(memory_format=torch.channels_last)
        model.train()
        self.model: PromptedClassifier = model
        self.optimizer = _optimizer(model, study)
        self.loss_fn = nn.CrossEntropyLoss()
        self.x, self.y = x, y
        self.grad = torch.randn_like(x)

    def step(self) -> None:
        with _autocast(self.device, self.amp):
            logits = self.model(self.x)
            loss = self.loss_fn(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def prompt_step(self) -> None:
        """The prompt's forward and backward alone, with a fixed upstream gradient."""
        with _autocast(self.device, self.amp):
            out = self.model.prompter(self.x)
        if out.requires_grad:
            out.backward(self.grad)

    def saved_step_bytes(self) -> int:
        def forward() -> None:
            with _autocast(self.device, self.amp):
                self.loss_fn(self.model(self.x).float(), self.y)

        return U.saved_bytes(forward, [*self.model.parameters(), *self.model.buffers(), self.x])

    def saved_prompt_bytes(self) -> int:
        def forward() -> None:
            with _autocast(self.device, self.amp):
                self.model.prompter(self.x)

        return U.saved_bytes(forward, [*self.model.prompter.parameters(), self.x])

    def stats(self) -> str:
        s = self.model.prompter.stats()
        return f"{float(s['density']):.2f} / {float(s['firing_rate']):.3f}"


def _pin_malloc() -> None:
    """glibc: serve every allocation >= 128 KiB by mmap, so freed tensors leave RSS at once."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_rss_growth(fn: Callable[[], None]) -> float:
    """Peak RSS during ``fn`` minus RSS before it, MiB (Linux only; NaN elsewhere)."""
    try:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter
        before = U.rss_now_mib()
        fn()
        return _hwm_mib() - before
    except OSError:
        return float("nan")


def memory_columns(b: Bench) -> dict[str, float]:
    unit = 2**20
    if b.device.type == "cuda":
        b.step()  # optimiser state exists before the measured step
        peak, extra = U.gpu_peak(b.step, b.device)
        return {"peak_mib": peak, "step_extra_mib": extra,
                "saved_prompt_mib": b.saved_prompt_bytes() / unit}
    b.step()
    growth = min(cpu_rss_growth(b.step) for _ in range(2))
    return {"saved_step_mib": b.saved_step_bytes() / unit, "saved_prompt_mib": b.saved_prompt_bytes() / unit,
            "rss_growth_mib": growth}


def build_all(cfg: dict[str, Any], variants: list[Variant]) -> dict[str, Bench]:
    device = torch.device(cfg["device"])
    n, size = cfg["batch_size"], cfg["image_size"]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=gen).to(device)  # pixel space [0, 1], as BatchIterator gives
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen).to(device)
    benches: dict[str, Bench] = {}
    backbone = None
    for v in variants:
        b = Bench(cfg, v, backbone, x, y)
        backbone = b.model.backbone
        benches[v.label] = b
    return benches


def section_methods(cfg: dict[str, Any], args: argparse.Namespace, out: dict[str, Any]) -> None:
    K, T = 4, 8
    variants = [Variant("none", "none"), Variant("lorvp", "lorvp"),
                Variant(f"lorsp K={K} T={T}", "lorsp", K, T), Variant(f"spike_nvpt T={T}", "spike_nvpt", 1, T)]
    benches = build_all(cfg, variants)
    fns: dict[str, Callable[[], None]] = {}
    for label, b in benches.items():
        fns[label] = b.step
        if b.variant.method != "none":
            fns[f"prompt:{label}"] = b.prompt_step
    times = U.interleaved(fns, benches["none"].device, rounds=args.rounds, reps=args.reps)
    mem = {label: memory_columns(b) for label, b in benches.items()}
    gpu = benches["none"].device.type == "cuda"
    rows, record = [], {}
    for label, b in benches.items():
        step_ms = U.median(times[label]) * 1e3
        p_key = f"prompt:{label}"
        p_ms = U.median(times[p_key]) * 1e3 if p_key in times else 0.0
        share = U.ratio(times, p_key, label) if p_key in times else (0.0, 0.0, 0.0)
        m = mem[label]
        if gpu:
            mem_cells = [f"{m['peak_mib']:.0f}", f"{m['peak_mib'] / mem['lorvp']['peak_mib']:.3f}",
                         f"{m['step_extra_mib']:.0f}"]
        else:
            mem_cells = [f"{m['saved_step_mib']:.1f}", f"{m['saved_prompt_mib']:.1f}", f"{m['rss_growth_mib']:.0f}"]
        rows.append([label, f"{step_ms:.1f}", U.fmt_ratio(U.ratio(times, label, "none")),
                     U.fmt_ratio(U.ratio(times, label, "lorvp")), f"{p_ms:.2f}", f"{100 * share[0]:.1f}%",
                     *mem_cells, b.stats() if b.model.prompter.spiking else "-"])
        record[label] = {"step_ms": step_ms, "prompt_ms": p_ms, "prompt_share": share[0],
                         "x_none": U.ratio(times, label, "none"), "x_lorvp": U.ratio(times, label, "lorvp"), **m,
                         "times_s": times[label]}
    mem_heads = (["peak MiB", "peak / lorvp", "step extra MiB"] if gpu else
                 ["saved/bwd MiB", "prompt saved MiB", "RSS growth MiB"])
    print(U.table(["variant", "step ms", "x none", "x lorvp", "prompt fwd+bwd ms", "prompt share",
                   *mem_heads, "density / firing"], rows,
                  title=f"Step time by method ({args.config}: {cfg['model']} {cfg['image_size']} px, batch "
                        f"{cfg['batch_size']}; ratios: median [quartiles] of per-round ratios)"))
    lv, ls = "lorvp", f"lorsp K={K} T={T}"
    # Less noisy than the ratio of two whole steps: the steps differ only by the prompt's own work.
    est = sorted(1 + (p_s - p_v) / s_v for p_s, p_v, s_v in
                 zip(times[f"prompt:{ls}"], times[f"prompt:{lv}"], times[lv]))
    measured = U.ratio(times, ls, lv)
    print(f"\n{ls} / {lv} step time: measured {U.fmt_ratio(measured)}; from the prompts' own cost, "
          f"1 + (prompt_lorsp - prompt_lorvp) / step_lorvp = {U.median(est):.3f} (target <= 1.5 on CPU, "
          f"<= 1.10 on GPU)")
    record["lorsp_over_lorvp"] = {"measured": measured, "from_prompt_cost": U.median(est)}
    out["methods"] = record


def section_sweep(cfg: dict[str, Any], args: argparse.Namespace, out: dict[str, Any]) -> None:
    variants = [Variant("lorvp", "lorvp")]
    for K in (1, 4):
        for T in (1, 4, 8, 16):
            variants.append(Variant(f"K={K} T={T}", "lorsp", K, T))
    benches = build_all(cfg, variants)
    fns: dict[str, Callable[[], None]] = {}
    for label, b in benches.items():
        fns[label] = b.step
        if label != "lorvp":
            fns[f"prompt:{label}"] = b.prompt_step
    times = U.interleaved(fns, benches["lorvp"].device, rounds=args.rounds, reps=args.reps)
    gpu = benches["lorvp"].device.type == "cuda"
    rows, record = [], {}
    base_peak = None
    for label, b in benches.items():
        m = memory_columns(b) if gpu else {"saved_prompt_mib": b.saved_prompt_bytes() / 2**20}
        if label == "lorvp":
            base_peak = m.get("peak_mib")
        p_ms = U.median(times[f"prompt:{label}"]) * 1e3 if label != "lorvp" else 0.0
        mem_cells = ([f"{m['peak_mib']:.0f}", f"{m['peak_mib'] / base_peak:.3f}"] if gpu else
                     [f"{m['saved_prompt_mib']:.1f}"])
        rows.append([label, f"{U.median(times[label]) * 1e3:.1f}", U.fmt_ratio(U.ratio(times, label, "lorvp")),
                     f"{p_ms:.2f}", *mem_cells])
        record[label] = {"step_ms": U.median(times[label]) * 1e3, "prompt_ms": p_ms,
                         "x_lorvp": U.ratio(times, label, "lorvp"), **m}
    heads = ["peak MiB", "peak / lorvp"] if gpu else ["prompt saved MiB"]
    print(U.table(["LoRSP", "step ms", "x lorvp", "prompt fwd+bwd ms", *heads], rows,
                  title="LoRSP cost against timesteps T and factors K (step time relative to LoR-VP)"))
    out["sweep"] = record


def section_reference(cfg: dict[str, Any], args: argparse.Namespace, out: dict[str, Any]) -> None:
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        print("\n(reference section skipped: SpikingJelly is not installed here)")
        return
    variants = []
    for T in (4, 8):
        variants += [Variant(f"fast K=4 T={T}", "lorsp", 4, T), Variant(f"spikingjelly K=4 T={T}", "lorsp", 4, T, True)]
    benches = build_all(cfg, variants)
    fns: dict[str, Callable[[], None]] = {}
    for label, b in benches.items():
        fns[label] = b.step
        fns[f"prompt:{label}"] = b.prompt_step
    rounds = max(3, args.rounds // 2)
    times = U.interleaved(fns, benches[variants[0].label].device, rounds=rounds, reps=1)
    rows, record = [], {}
    for T in (4, 8):
        fast, ref = f"fast K=4 T={T}", f"spikingjelly K=4 T={T}"
        for label in (fast, ref):
            b = benches[label]
            rows.append([label, f"{U.median(times[f'prompt:{label}']) * 1e3:.1f}",
                         f"{U.median(times[label]) * 1e3:.1f}", f"{b.saved_prompt_bytes() / 2**20:.1f}",
                         U.fmt_ratio(U.ratio(times, f"prompt:{ref}", f"prompt:{fast}")) if label == fast else "",
                         U.fmt_ratio(U.ratio(times, ref, fast)) if label == fast else ""])
        record[T] = {"prompt_speedup": U.ratio(times, f"prompt:{ref}", f"prompt:{fast}"),
                     "step_speedup": U.ratio(times, ref, fast)}
    print(U.table(["neurons", "prompt fwd+bwd ms", "step ms", "prompt saved MiB", "prompt speed-up",
                   "step speed-up"], rows, title="Fast constant-current LIF against SpikingJelly's LIFNode"))
    out["reference"] = record


SECTIONS = {"methods": section_methods, "sweep": section_sweep, "reference": section_reference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--sections", default="methods,sweep,reference",
                        help="comma-separated subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--reps", type=int, default=3, help="calls per variant per round (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the configuration's batch")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS[args.config])
    if args.batch_size:
        cfg["batch_size"] = args.batch_size
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        parser.error("--config gpu needs a CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if cfg["device"] == "cpu":
        _pin_malloc()
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    print(f"# benchmarks/step.py --config {args.config}: {U.machine_line(device)}")
    out: dict[str, Any] = {"config": cfg, "machine": U.machine_line(device)}
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}: choose from {', '.join(SECTIONS)}")
        SECTIONS[name](cfg, args, out)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    U.dump_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
