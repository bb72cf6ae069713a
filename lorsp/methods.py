"""The prompt methods and their knobs, declared once: the registry every other layer derives from.

A method is declared by a :class:`Method`: its name, the knobs it reads (each a :class:`Knob` with
its type, valid range and default) and the prompter class that implements it, named as
``"module:Class"`` so that the class (a ``torch.nn.Module``) is imported only when a prompter is
built. From these declarations come the study file's `prompt` section (its keys, their types,
ranges and defaults: :mod:`lorsp.config.prompt`), the conditional search space (which knobs a trial
of a method samples: :func:`lorsp.search.used_knobs`), the values a prompter is built with and the
range checks it gets (:func:`lorsp.prompts.create_prompter`), and so `lorsp.train`'s defaults.
There is no second list to keep in step.

A new method is one :func:`register_method` call beside its prompter class (see
``tests/toy_prompter.py``); a study file names the module under `plugins:` so that the driver and
every Ray trial process import it, and so register it, before the study is validated.

Standard library only (no torch): the command line validates a study without importing torch.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lorsp.errors import ConfigError

KnobType = Literal["int", "float", "bool", "categorical"]


@dataclass(frozen=True)
class Knob:
    """One setting a method reads: its name in the study's `prompt` section, type, range, default.

    Bounds follow pydantic's ``Field`` (``ge``/``gt``/``le``/``lt``); a categorical knob lists its
    `choices`. A knob several methods read (`rank`) is one declaration that they share: the study's
    `prompt` section holds one value per name, so two methods cannot disagree about it.
    """

    name: str
    type: KnobType
    default: Any
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        # A declaration whose own default is invalid would fail every run that leaves the knob out.
        if self.type == "categorical" and not self.choices:
            raise ValueError(f"knob {self.name!r}: a categorical knob needs choices")
        problem = self.problem(self.default)
        if problem:
            raise ValueError(f"knob {self.name!r}: its default {problem}")

    def bounds(self) -> str:
        """The valid range in words, e.g. ``>= 1`` or ``in (0, 1)``."""
        if self.type == "categorical":
            return f"one of {', '.join(map(str, self.choices))}"
        low = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else None
        high = ("<=", self.le) if self.le is not None else ("<", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {'[' if low[0] == '>=' else '('}{low[1]}, {high[1]}{']' if high[0] == '<=' else ')'}"
        one = low or high
        return f"{one[0]} {one[1]}" if one else "of any size"

    def problem(self, value: Any) -> str | None:
        """Why `value` is not a valid setting of this knob (``"must be ..., got ..."``), or None."""
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(self.type)
        if self.type == "categorical":
            if value in self.choices:
                return None
            hint = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            return f"must be {self.bounds()}, got {value!r}{suggestion}"
        if self.type == "bool":
            return None if isinstance(value, bool) else f"must be {kind}, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return f"must be {kind}, got {value!r}"
        if self.type == "int" and value != int(value):
            return f"must be {kind}, got {value!r}"
        inside = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return None if inside else f"must be {kind} {self.bounds()}, got {value!r}"

    def check(self, value: Any) -> Any:
        """`value` as this knob's type (``4.0`` -> ``4`` for an int knob); ValueError naming the knob."""
        problem = self.problem(value)
        if problem:
            raise ValueError(f"{self.name}: {problem}")
        if self.type == "int":
            return int(value)
        return float(value) if self.type == "float" else value


@dataclass(frozen=True)
class Method:
    """A prompt method: its name, the knobs it reads, and the class that implements it.

    `implementation` is ``"package.module:Class"`` (imported when a prompter is built, so that the
    declarations stay torch-free) or the class itself. `spiking` methods take ``reference=True``
    (SpikingJelly's neurons instead of the fast path).
    """

    name: str
    knobs: tuple[Knob, ...]
    implementation: str | type
    spiking: bool = False
    doc: str = ""

    @property
    def knob_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """This method's knobs from flat `given` settings, checked, each missing one at its default."""
        return {k.name: k.check(given[k.name]) if k.name in given else k.default for k in self.knobs}

    def load(self) -> type:
        """The implementing class (imports its module the first time)."""
        if not isinstance(self.implementation, str):
            return self.implementation
        module, _, attr = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attr)


_METHODS: dict[str, Method] = {}


def register_method(declared: Method) -> Method:
    """Add a method to the registry (at its module's import) and return it.

    Registering the same declaration again (a module imported twice) is harmless; a different one
    under a taken name is refused, as is a knob that another method declares differently (one
    `prompt.<knob>` value serves every method that reads it).
    """
    if declared.name == "method" or any(k.name == "method" for k in declared.knobs):
        raise ValueError("'method' is the `prompt` section's method key: name the method or knob otherwise")
    old = _METHODS.get(declared.name)
    if old is not None and old != declared:
        raise ValueError(f"prompt method {declared.name!r} is already registered by {old.implementation}")
    shared = knobs()
    for knob in declared.knobs:
        if knob.name in shared and shared[knob.name] != knob:
            raise ValueError(f"method {declared.name!r} declares knob {knob.name!r} unlike the methods that "
                             f"already read it ({shared[knob.name]}); reuse that declaration or rename the knob")
    _METHODS[declared.name] = declared
    return declared


def unregister_method(name: str) -> None:
    """Remove a method (a test's plugin, once the test is done); a built-in one stays removed
    until the process restarts, so do not."""
    _METHODS.pop(name, None)


def methods() -> tuple[Method, ...]:
    """Every registered method, in registration order (the built-in ones first)."""
    return tuple(_METHODS.values())


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def method(name: str) -> Method:
    """The declaration of method `name`; ValueError with the close match and the choices."""
    found = _METHODS.get(name)
    if found is None:
        raise ValueError(unknown_method(name))
    return found


def unknown_method(name: Any) -> str:
    hint = difflib.get_close_matches(str(name), list(_METHODS), n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    return (f"unknown prompt method '{name}'{suggestion}: choose one of {', '.join(_METHODS)}, "
            "or name the module that registers it under `plugins:`")


def knobs() -> dict[str, Knob]:
    """Every knob some registered method reads, by name, in declaration order."""
    out: dict[str, Knob] = {}
    for declared in _METHODS.values():
        for knob in declared.knobs:
            out.setdefault(knob.name, knob)
    return out


def load_plugins(modules: Iterable[str]) -> None:
    """Import the modules a study names under `plugins:`, so that the methods they register exist in
    this process (the driver and every trial process call this before validating the study)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure of the import is the one line to show
            reason = str(err).splitlines()[0] if str(err) else ""
            raise ConfigError(
                f"plugins: cannot import '{name}' ({type(err).__name__}: {reason}); install it or add its "
                "folder to PYTHONPATH (the Ray workers import it too), or remove it from plugins"
            ) from None


# ---------------------------------------------------------------- the built-in methods (docs/methods.md)
RANK = Knob("rank", "int", 4, ge=1, doc="rank r of each low-rank factor B·A")
FACTORS = Knob("factors", "int", 1, ge=1, doc="number K of prompt factors")
TIMESTEPS = Knob("timesteps", "int", 4, ge=1, doc="time steps T the neurons run")
THRESHOLD = Knob("threshold", "float", 0.5, gt=0.0, doc="firing threshold V_th")
DECAY = Knob("decay", "float", 0.5, gt=0.0, lt=1.0, doc="membrane leak 1/tau, so tau > 1")
SURROGATE_SLOPE = Knob("surrogate_slope", "float", 4.0, gt=0.0, doc="slope of the sigmoid surrogate gradient")
PAD_WIDTH = Knob("pad_width", "int", 4, ge=1, doc="width p of the frame (at most half the image)")
NOISE_STD = Knob("noise_std", "float", 0.1, ge=0.0, doc="std of the training noise on the current")
LOW_RANK = Knob("low_rank", "bool", False, doc="theta as a low-rank product B·A instead of dense")
LORSP_MODE = Knob("lorsp_mode", "categorical", "pixel", choices=("pixel", "factor"),
                  doc="neurons per pixel, or one spiking gate per factor")

register_method(Method("none", (), "lorsp.prompts.none:NoPrompter", doc="linear probe, no prompt"))
register_method(Method("pad", (PAD_WIDTH,), "lorsp.prompts.pad:PadPrompter", doc="Bahng et al. padding"))
register_method(Method("lorvp", (RANK,), "lorsp.prompts.lorvp:LoRVPPrompter", doc="LoR-VP low-rank prompt"))
register_method(Method("lorsp", (RANK, FACTORS, TIMESTEPS, THRESHOLD, DECAY, SURROGATE_SLOPE, LORSP_MODE),
                       "lorsp.prompts.lorsp:LoRSPPrompter", spiking=True, doc="LoRSP"))
register_method(Method("spike_nvpt", (RANK, TIMESTEPS, THRESHOLD, SURROGATE_SLOPE, NOISE_STD, LOW_RANK),
                       "lorsp.prompts.spike_nvpt:SpikeNVPTPrompter", spiking=True, doc="Spike-NVPT"))
