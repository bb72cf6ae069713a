"""A plugin prompt method, declared the one way any new method is: a prompter class and one
`register_method` call beside it, touching no other file. Tests name this module under `plugins:`
so that the driver and every Ray trial process import it (and so register `toy`) before validating
the study.

The prompt is `toy_scale · tanh(θ)` with θ a `toy_tiles` × `toy_tiles` grid per channel stretched
over the image (nearest neighbour), initialised to 0: like every built-in method it starts at an
exactly zero prompt and gets a gradient at once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lorsp.methods import Knob, Method, register_method
from lorsp.prompts import Prompter
from lorsp.prompts.base import full_precision
from lorsp.prompts.energy import EnergyOps, static_prompt_ops

TOY = register_method(Method(
    "toy",
    knobs=(
        Knob("toy_scale", "float", 0.5, ge=0.0, le=2.0, doc="largest prompt value, in [0, 1] pixel units"),
        Knob("toy_tiles", "int", 3, ge=1, le=8, doc="tiles per side of the prompt's grid"),
    ),
    implementation=f"{__name__}:ToyPrompter",
    doc="a test's plugin method",
))


class ToyPrompter(Prompter):
    """3·tiles² parameters; its knobs arrive as keyword arguments without defaults (the declaration's)."""

    method = "toy"

    def __init__(self, image_size: int, *, toy_scale: float, toy_tiles: int) -> None:
        super().__init__(image_size)
        self.toy_scale = toy_scale
        self.toy_tiles = toy_tiles
        self.theta = nn.Parameter(torch.zeros(1, 3, toy_tiles, toy_tiles))

    def energy_ops(self, firing_rate: float) -> EnergyOps:
        """Static: one addition per pixel and channel."""
        return static_prompt_ops(3 * self.image_size**2)

    def prompt(self, x: Tensor) -> Tensor:
        with full_precision(x.device):
            grid = torch.tanh(self.theta.float()) * self.toy_scale
            prompt = nn.functional.interpolate(grid, size=(self.image_size, self.image_size), mode="nearest")
        self._record(prompt)
        return prompt
