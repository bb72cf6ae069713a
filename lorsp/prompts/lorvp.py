"""LoR-VP (Jin et al., ICLR 2025): a low-rank prompt B·A per channel over the whole image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Prompter, full_precision, low_rank_product
from .energy import EnergyOps, static_prompt_ops

#: LoR-VP's init scale for A; with B = 0 the prompt starts at exactly zero.
A_INIT_STD = 0.01


class LoRVPPrompter(Prompter):
    """Prompt = B·A per channel, B ∈ R^{3×L×r} (init 0), A ∈ R^{3×r×L} (init N(0, 0.01²)); 6·L·r params.

    As in LoRA, only B receives a gradient on the first step (∂/∂A = Bᵀ·g = 0 while B = 0);
    A starts moving as soon as B is non-zero.
    """

    method = "lorvp"

    def __init__(self, image_size: int, *, rank: int) -> None:
        super().__init__(image_size)
        self.rank = int(rank)
        size = self.image_size
        self.B = nn.Parameter(torch.zeros(3, size, self.rank))
        self.A = nn.Parameter(torch.randn(3, self.rank, size) * A_INIT_STD)

    def energy_ops(self, firing_rate: float) -> EnergyOps:
        """Static: B·A does not depend on the image, so it is computed once; per image one addition
        per pixel and channel, 3·L² ACs."""
        return static_prompt_ops(3 * self.image_size**2)

    def prompt(self, x: Tensor) -> Tensor:
        with full_precision(x.device):
            prompt = low_rank_product(self.B, self.A).unsqueeze(0)
        self._record(prompt)
        return prompt
