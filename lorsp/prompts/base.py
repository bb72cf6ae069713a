"""The contract every visual prompt follows, so the model and training loop never special-case one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn

from lorsp.methods import Method, method

from .energy import EnergyOps


class Prompter(nn.Module):
    """x: [N,3,L,L] pixel space in [0,1] (before backbone normalisation) -> prompted batch, same shape.

    The prompt is added before the backbone's mean/std normalisation, as LoR-VP does, so every
    method perturbs the same pixel space and amplitudes are comparable across methods.
    Subclasses implement :meth:`prompt` and call :meth:`_record` there, so that :meth:`stats`
    always describes the last batch without any host synchronisation in the training step.
    """

    #: the name of the :class:`lorsp.methods.Method` that declares this prompter's knobs; a subclass
    #: takes each declared knob as a keyword argument without a default (:func:`lorsp.prompts.create_prompter`
    #: fills in the declared default and checks the range, so neither is written twice)
    method: ClassVar[str]

    def __init__(self, image_size: int) -> None:
        super().__init__()
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        self._density: Tensor = torch.zeros(())
        self._firing_rate: Tensor = torch.zeros(())

    @property
    def declaration(self) -> Method:
        """This method's declaration: its knobs, their ranges and defaults, whether it spikes."""
        return method(self.method)

    @property
    def spiking(self) -> bool:
        return self.declaration.spiking

    def forward(self, x: Tensor) -> Tensor:
        """Prompted batch ``x + prompt``; not clamped, because LoR-VP does not clamp either."""
        self._check_input(x)
        return x + self.prompt(x)

    def prompt(self, x: Tensor) -> Tensor:
        """The additive prompt: [N,3,L,L], or [1,3,L,L] for instance-agnostic methods."""
        raise NotImplementedError

    def num_prompt_params(self) -> int:
        """Parameters of the prompt (all of them: freezing a prompt for export does not change its size)."""
        return sum(p.numel() for p in self.parameters())

    def energy_ops(self, firing_rate: float) -> EnergyOps:
        """Operations per image of generating the prompt and adding it to the image at inference
        (docs/methods.md, "Energy"); `firing_rate` is the measured spikes per neuron per step of
        the same images (:meth:`stats`), which spike-driven methods need. Every method defines its
        own count, so the formula sits beside the code it describes."""
        raise NotImplementedError(f"{type(self).__name__} does not count its operations")

    def spike_counts(self, x: Tensor) -> Tensor | None:
        """Spikes each image's neurons emit over the T steps (both populations, every factor), by
        where they act: [N, 3, L, L] for neurons per pixel, [N, K, 3] for per-factor gates; None
        for a method without neurons. For looking at a prompt (:mod:`lorsp.gallery`): it runs the
        neurons once more and leaves :meth:`stats` alone, so call it outside training."""
        return None

    def stats(self) -> dict[str, Tensor]:
        """Density and firing rate of the last forward as detached 0-dim tensors (read them lazily)."""
        return {"density": self._density, "firing_rate": self._firing_rate}

    def _record(self, prompt: Tensor, firing_rate: Tensor | None = None) -> None:
        """Keep the last batch's statistics on the prompt's device; no ``.item()``, so no sync."""
        with torch.no_grad():
            self._density = (prompt != 0).float().mean()
            if firing_rate is None:
                self._firing_rate = torch.zeros((), device=prompt.device)
            else:
                self._firing_rate = firing_rate.detach().float()

    def _check_input(self, x: Tensor) -> None:
        size = self.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (size, size):
            raise ValueError(
                f"{self.method} prompter expects [N, 3, {size}, {size}] images, got {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, params={self.num_prompt_params()}"


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast: prompts are tiny, and bf16 would quantise neuron currents near threshold."""
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def low_rank_product(B: Tensor, A: Tensor) -> Tensor:
    """Per-channel ``B @ A`` ([..., 3, L, r] @ [..., 3, r, L]) in fp32: the LoR-VP prompt factor."""
    return torch.matmul(B.float(), A.float())
