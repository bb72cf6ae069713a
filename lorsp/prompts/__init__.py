"""Input-level visual prompts (docs/methods.md): one module per method behind one factory.

Which methods exist, the knobs each reads and their ranges and defaults are declared once, in
:mod:`lorsp.methods` (torch-free, so the command line validates a study without torch); this
package holds the implementations. Only torch is needed here (SpikingJelly only for
``reference=True``), so the prompts run on machines without Ray or MLflow.
"""

from __future__ import annotations

from typing import Any

from lorsp.methods import knobs, method

from .base import Prompter
from .energy import EnergyOps
from .lorsp import LoRSPPrompter
from .lorvp import LoRVPPrompter
from .none import NoPrompter
from .pad import PadPrompter
from .spike_nvpt import SpikeNVPTPrompter

__all__ = [
    "EnergyOps",
    "Prompter",
    "NoPrompter",
    "PadPrompter",
    "LoRVPPrompter",
    "LoRSPPrompter",
    "SpikeNVPTPrompter",
    "create_prompter",
]


def create_prompter(method_name: str, image_size: int, *, reference: bool = False, **settings: Any) -> Prompter:
    """Build a prompter from flat settings, passing the method only the knobs it declares.

    `settings` are prompt settings by name (a study's whole `prompt` section can be passed): each
    method takes the ones its declaration (:mod:`lorsp.methods`) lists and ignores the rest, so a
    search space can vary e.g. `decay` for every method without the non-spiking ones rejecting it;
    each value is checked against its declared range, and a knob left out takes its declared
    default. A name no method knows is refused (a typo would otherwise do nothing).
    ``reference=True`` (spiking methods only) runs SpikingJelly's neurons instead of the fast
    constant-current path, for comparisons. This is the one checked way to build a prompter.
    """
    declared = method(method_name)
    unknown = set(settings) - set(knobs())
    if unknown:
        raise ValueError(f"unknown prompt setting(s) {sorted(unknown)}: the methods' knobs are {sorted(knobs())}")
    kwargs = declared.settings(settings)
    if declared.spiking:
        kwargs["reference"] = reference
    cls = declared.load()
    if not (isinstance(cls, type) and issubclass(cls, Prompter) and cls.method == declared.name):
        raise TypeError(f"method {declared.name!r}: {declared.implementation} is not a Prompter whose "
                        f"`method` is {declared.name!r}")
    return cls(image_size, **kwargs)
