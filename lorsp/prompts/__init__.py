"""Input-level visual prompts (docs/methods.md): one module per method behind one factory.

Only torch is needed here (SpikingJelly only for ``reference=True``), so the prompts run on
machines without Ray or MLflow.
"""

from __future__ import annotations

from .base import Prompter
from .energy import EnergyOps
from .lorsp import LoRSPPrompter
from .lorvp import LoRVPPrompter
from .none import NoPrompter
from .pad import PadPrompter
from .spike_nvpt import SpikeNVPTPrompter

__all__ = [
    "PROMPTERS",
    "EnergyOps",
    "Prompter",
    "NoPrompter",
    "PadPrompter",
    "LoRVPPrompter",
    "LoRSPPrompter",
    "SpikeNVPTPrompter",
    "create_prompter",
]

PROMPTERS: dict[str, type[Prompter]] = {
    cls.method: cls
    for cls in (NoPrompter, PadPrompter, LoRVPPrompter, LoRSPPrompter, SpikeNVPTPrompter)
}


def create_prompter(
    method: str,
    image_size: int,
    *,
    rank: int = 4,
    factors: int = 1,
    timesteps: int = 4,
    threshold: float = 0.5,
    decay: float = 0.5,
    surrogate_slope: float = 4.0,
    pad_width: int = 4,
    noise_std: float = 0.1,
    low_rank: bool = False,
    lorsp_mode: str = "pixel",
    reference: bool = False,
) -> Prompter:
    """Build a prompter from flat settings, passing each method only the knobs it declares.

    A search space can therefore vary e.g. ``decay`` for every method without the non-spiking
    ones rejecting it. ``reference=True`` (spiking methods only) runs SpikingJelly's neurons
    instead of the fast constant-current path, for comparisons.
    """
    cls = PROMPTERS.get(method)
    if cls is None:
        raise ValueError(f"unknown prompt method {method!r}: choose one of {', '.join(PROMPTERS)}")
    settings = dict(
        rank=rank,
        factors=factors,
        timesteps=timesteps,
        threshold=threshold,
        decay=decay,
        surrogate_slope=surrogate_slope,
        pad_width=pad_width,
        noise_std=noise_std,
        low_rank=low_rank,
        lorsp_mode=lorsp_mode,
    )
    kwargs = {name: settings[name] for name in cls.knobs}
    if cls.spiking:
        kwargs["reference"] = reference
    return cls(image_size, **kwargs)
