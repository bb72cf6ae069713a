"""Spike-NVPT (pixel-level reading of arXiv 2604.18284): a binary ±a prompt gated by IF neurons."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Prompter, full_precision, low_rank_product
from .energy import EnergyOps, static_prompt_ops
from .lif import heaviside, if_rate, reference_rate
from .lorvp import A_INIT_STD

#: initial current, in thresholds: every neuron fires within T >= 2 steps (so the "fired" gate is
#: open and surrogate gradients reach every pixel) at a rate of about ½, where the mask's
#: surrogate derivative is largest.
INIT_CURRENT = 0.75


class SpikeNVPTPrompter(Prompter):
    """θ (dense 3×L×L, or low-rank B·A) → IF neurons over T steps → mask b = H(rate − ½).

    prompt = a ⊙ (2b − 1) ⊙ [rate > 0]; 3·L² + 3 parameters dense, 6·L·r + 3 low-rank.
    Training adds fresh N(0, noise_std²) noise to the current at every forward (the "signal
    filtering" that makes the mask robust). In eval mode the prompt is a constant: it is computed
    once without noise, without autograd, and reused until a parameter changes or the mode flips.

    Init: θ = 0.75·V_th (+ N(0, 0.01²)); low-rank B and A are both the constant √(0.75·V_th/r)
    with LoR-VP's N(0, 0.01²) added to A, so B·A ≈ 0.75·V_th. LoR-VP's own init (B = 0) would
    give zero current, no neuron would ever fire, and since the prompt is gated by "fired" no
    gradient could ever flow. a starts at 0 so the prompt is exactly zero at first, like the
    other methods; a gets a gradient at once ((2b − 1)·fired ≠ 0) and θ from the next step.
    """

    method = "spike_nvpt"

    def __init__(
        self,
        image_size: int,
        *,
        rank: int,
        timesteps: int,
        threshold: float,
        surrogate_slope: float,
        noise_std: float,
        low_rank: bool,
        reference: bool = False,
    ) -> None:
        super().__init__(image_size)
        self.timesteps = int(timesteps)
        self.threshold = float(threshold)
        self.surrogate_slope = float(surrogate_slope)
        self.noise_std = float(noise_std)
        self.low_rank = bool(low_rank)
        self.reference = bool(reference)
        L = self.image_size
        start = INIT_CURRENT * self.threshold
        if self.low_rank:
            self.rank = int(rank)
            level = math.sqrt(start / self.rank)
            self.B = nn.Parameter(torch.full((3, L, self.rank), level))
            self.A = nn.Parameter(level + torch.randn(3, self.rank, L) * A_INIT_STD)
        else:
            self.rank = 0
            self.theta = nn.Parameter(start + torch.randn(3, L, L) * A_INIT_STD)
        self.amplitude = nn.Parameter(torch.zeros(3))
        self._cache: tuple[tuple, Tensor, Tensor, Tensor] | None = None

    def current(self) -> Tensor:
        """The learnt, noise-free current θ: [3, L, L] fp32."""
        if self.low_rank:
            return low_rank_product(self.B, self.A)
        return self.theta.float()

    def _compute(self, noisy: bool) -> tuple[Tensor, Tensor]:
        """(prompt [1, 3, L, L], firing rate of every neuron [3, L, L])."""
        current = self.current()
        if noisy and self.noise_std > 0:
            current = current + torch.randn_like(current) * self.noise_std
        rate_fn = reference_rate if self.reference else if_rate
        rate = rate_fn(current, self.timesteps, self.threshold, self.surrogate_slope)
        mask = heaviside(rate - 0.5, self.surrogate_slope)
        fired = (rate > 0).to(rate.dtype)
        prompt = self.amplitude.float()[:, None, None] * (2 * mask - 1) * fired
        return prompt.unsqueeze(0), rate

    def spike_counts(self, x: Tensor) -> Tensor:
        """Spikes of the noise-free IF neurons over the T steps, [N, 3, L, L]: the same for every
        image (the prompt is instance-agnostic), the spikes behind the static eval prompt."""
        with torch.no_grad(), full_precision(x.device):
            _, rate = self._compute(noisy=False)
            counts = torch.round(rate * self.timesteps)
        return counts.expand(x.shape[0], *counts.shape)

    def energy_ops(self, firing_rate: float) -> EnergyOps:
        """Static at inference (the eval prompt is computed once and cached): one addition per
        pixel and channel, 3·L² ACs, whatever the neurons' firing rate was."""
        return static_prompt_ops(3 * self.image_size**2)

    def _cache_key(self) -> tuple:
        # _version moves on every in-place update (optimizer step, load_state_dict), data_ptr on
        # .to()/.half(): together they say when the static eval prompt is stale, without a sync.
        return tuple((p.data_ptr(), p._version) for p in self.parameters())

    def prompt(self, x: Tensor) -> Tensor:
        with full_precision(x.device):
            if self.training:
                prompt, rate = self._compute(noisy=True)
                self._record(prompt, rate.mean())
                return prompt
            key = self._cache_key()
            if self._cache is None or self._cache[0] != key:
                with torch.no_grad():
                    prompt, rate = self._compute(noisy=False)
                    density = (prompt != 0).float().mean()
                self._cache = (key, prompt, density, rate.mean())
        _, prompt, self._density, self._firing_rate = self._cache
        return prompt

    def train(self, mode: bool = True) -> SpikeNVPTPrompter:
        self._cache = None
        return super().train(mode)
