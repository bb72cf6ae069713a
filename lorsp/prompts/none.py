"""No prompt: the linear-probe baseline every prompt has to beat."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Prompter
from .energy import EnergyOps


class NoPrompter(Prompter):
    """Identity; keeps the Prompter contract so the model and loop need no special case."""

    method = "none"

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        self._record(self.prompt(x))
        return x

    def energy_ops(self, firing_rate: float) -> EnergyOps:
        """Nothing is computed or added."""
        return EnergyOps(macs=0.0, acs=0.0)

    def prompt(self, x: Tensor) -> Tensor:
        size = self.image_size
        return torch.zeros(1, 3, size, size, device=x.device, dtype=x.dtype)
