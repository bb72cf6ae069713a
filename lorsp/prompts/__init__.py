"""Input-level visual prompts (docs/methods.md): one module per method behind one factory.

Only torch is needed here (SpikingJelly only for ``reference=True``), so the prompts run on
machines without Ray or MLflow.
"""

from __future__ import annotations

from typing import Any

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
KNOBS: frozenset[str] = frozenset(k for cls in PROMPTERS.values() for k in cls.knobs)
"""Every prompt setting some method reads; the study file's `prompt` section holds these and `method`."""


def create_prompter(method: str, image_size: int, *, reference: bool = False, **settings: Any) -> Prompter:
    """Build a prompter from flat settings, passing the method only the knobs it declares.

    `settings` are prompt settings by name (a study's whole `prompt` section can be passed): each
    method takes the ones in its `knobs` and ignores the rest, so a search space can vary e.g.
    `decay` for every method without the non-spiking ones rejecting it; a knob left out takes the
    method's own default. A name no method knows is refused (a typo would otherwise do nothing).
    ``reference=True`` (spiking methods only) runs SpikingJelly's neurons instead of the fast
    constant-current path, for comparisons.
    """
    cls = PROMPTERS.get(method)
    if cls is None:
        raise ValueError(f"unknown prompt method {method!r}: choose one of {', '.join(PROMPTERS)}")
    unknown = set(settings) - KNOBS
    if unknown:
        raise ValueError(f"unknown prompt setting(s) {sorted(unknown)}: the methods' knobs are {sorted(KNOBS)}")
    kwargs = {name: settings[name] for name in cls.knobs if name in settings}
    if cls.spiking:
        kwargs["reference"] = reference
    return cls(image_size, **kwargs)
