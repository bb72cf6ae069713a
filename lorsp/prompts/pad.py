"""Padding prompt of Bahng et al. (2022): a learnable frame of width p around the image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Prompter, full_precision
from .energy import EnergyOps, static_prompt_ops


class PadPrompter(Prompter):
    """Four border strips, 3·(L² − (L−2p)²) parameters, nothing learnt inside the frame.

    Initialised to zeros rather than Bahng et al.'s ``randn``: a unit-variance frame in [0, 1]
    pixel space would start every run far from the frozen backbone's clean-input behaviour, while
    LoR-VP and LoRSP start from an exactly zero prompt. Zero init keeps all methods starting from
    the linear probe; the prompt is additive, so the gradient reaches the border at once anyway.
    """

    method = "pad"

    def __init__(self, image_size: int, *, pad_width: int) -> None:
        super().__init__(image_size)
        size, p = self.image_size, int(pad_width)
        if not p <= size // 2:  # >= 1 is the declaration's (lorsp.methods.PAD_WIDTH); this bound needs the size
            raise ValueError(f"pad_width must be in [1, {size // 2}] for image_size {size}, got {pad_width}")
        self.pad_width = p
        inner = size - 2 * p
        self.pad_up = nn.Parameter(torch.zeros(3, p, size))
        self.pad_down = nn.Parameter(torch.zeros(3, p, size))
        self.pad_left = nn.Parameter(torch.zeros(3, inner, p))
        self.pad_right = nn.Parameter(torch.zeros(3, inner, p))

    def energy_ops(self, firing_rate: float) -> EnergyOps:
        """Static: one addition per stored frame entry, 3·(L² − (L−2p)²); the inside is untouched."""
        return static_prompt_ops(self.num_prompt_params())

    def prompt(self, x: Tensor) -> Tensor:
        inner = self.image_size - 2 * self.pad_width
        with full_precision(x.device):
            hole = self.pad_left.new_zeros(3, inner, inner)
            middle = torch.cat([self.pad_left, hole, self.pad_right], dim=2)
            frame = torch.cat([self.pad_up, middle, self.pad_down], dim=1).unsqueeze(0)
        self._record(frame)
        return frame
