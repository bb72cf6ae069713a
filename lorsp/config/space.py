"""The `space` section's knobs: what a search varies, each a numeric range or a list of choices, with
the value a single run uses, and a method's own range where one range cannot serve every method."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import SerializerFunctionWrapHandler, ValidationError, model_serializer, model_validator

from lorsp.config.base import _Section, unknown
from lorsp.methods import method_names

#: The keys each knob type accepts besides `type`. A key of another type (numeric bounds on a
#: categorical knob, choices on a float one) would be silently ignored by the sampler, so
#: :class:`SpaceParam` refuses it instead: the study would run, but not the search that was written.
KNOB_KEYS: dict[str, tuple[str, ...]] = {
    "int": ("low", "high", "log", "step", "default", "per_method"),
    "float": ("low", "high", "log", "step", "default", "per_method"),
    "categorical": ("choices", "default", "balanced"),
}
#: What a numeric knob's `per_method` entry may change: its range and its default.
RANGE_KEYS: tuple[str, ...] = ("low", "high", "log", "step", "default")


def _foreign_key_problem(kind: str, key: str) -> str:
    """Why `key` does not belong to a knob of type `kind`, and the fix, in one line."""
    accepted = KNOB_KEYS[kind]
    owners = [other for other, keys in KNOB_KEYS.items() if key in keys and other != kind]
    belongs = f" ('{key}' is for {' and '.join(owners)} knobs)" if owners else ""
    hint = difflib.get_close_matches(key, accepted, n=1)
    instead = f" (did you mean '{hint[0]}'?)" if hint and not owners else ""
    a = "an" if kind[0] in "aeiou" else "a"
    return (f"'{key}' is not a key of {a} {kind} knob{belongs}{instead}; {a} {kind} knob accepts "
            f"type, {', '.join(accepted)}: remove '{key}'")


class SpaceParam(_Section):
    """One searched knob: a numeric range or a list of choices, plus the value used when not searching.

    Each type takes only its own keys (:data:`KNOB_KEYS`); any other key is refused on load.
    """

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    default: Any = None
    balanced: bool = False
    """Categorical only: give every choice the same number of trials (e.g. one budget per method)
    instead of letting the sampler favour one; the other knobs are still sampled. Several balanced
    knobs share the budget among their combinations (see `lorsp.search.balanced_cells`)."""
    per_method: dict[str, dict[str, Any]] = {}
    """Int and float only: method -> its own `low`, `high`, `log`, `step` and/or `default` for a knob
    that several methods read, where one range cannot serve them all (a linear probe's lr is 5-10x
    a prompt's). Keys left out are the knob's own. The search samples each method from its range
    (as its own Optuna parameter, see `lorsp.search.param_name`) and a single run of that method
    uses its default."""

    @model_validator(mode="before")
    @classmethod
    def _own_keys_only(cls, data: Any) -> Any:
        # Before field validation, so that the type's own list is what the user reads; an unknown
        # or missing `type` is left to pydantic, whose message lists the types.
        if not isinstance(data, dict) or data.get("type") not in KNOB_KEYS:
            return data
        kind = data["type"]
        for key in sorted(map(str, data)):  # the first in name order, whatever the file's order
            if key != "type" and key not in KNOB_KEYS[kind]:
                raise ValueError(_foreign_key_problem(kind, str(key)))
        return data

    @model_serializer(mode="wrap")
    def _own_keys_dumped(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A dump is read back (stored studies, every trial's config): it carries only the keys
        # its type accepts, or the strict check above would refuse lorsp's own output.
        dumped = {k: v for k, v in handler(self).items() if k == "type" or k in KNOB_KEYS[self.type]}
        if not dumped.get("per_method", True):
            del dumped["per_method"]  # the default: left out, as a study file leaves it out
        return dumped

    @model_validator(mode="after")
    def _consistent(self) -> SpaceParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical knob needs a non-empty `choices` list")
            if self.default is not None and self.default not in self.choices:
                raise ValueError(f"default {self.default!r} is not one of choices {self.choices}")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} knob needs `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"empty range: low {self.low} > high {self.high}; swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int knob needs whole-number `low` and `high`")
        if self.step is not None:
            if not self.step > 0:
                raise ValueError(f"step must be > 0, got {self.step}; remove it for a continuous range")
            if self.type == "int" and self.step != int(self.step):
                raise ValueError(f"an int knob needs a whole-number `step`, got {self.step}")
            if self.log and not (self.type == "int" and self.step == 1):
                raise ValueError("a log-scale knob cannot have a step (Optuna samples it continuously): "
                                 "remove `step` or `log`")
        if self.default is not None:
            if not isinstance(self.default, (int, float)) or isinstance(self.default, bool):
                raise ValueError(f"default {self.default!r} is not a number")
            if not self.low <= self.default <= self.high:
                raise ValueError(f"default {self.default} lies outside [{self.low}, {self.high}]")
        for method in self.per_method:
            self._check_method_range(method)
        return self

    def _check_method_range(self, method: str) -> None:
        """Refuse a `per_method` entry that names no method, changes more than the range, or is
        not a valid knob of its own; the message says which entry."""
        where = f"per_method.{method}"
        if method not in method_names():
            raise ValueError(unknown("per_method", method, method_names(), what="method"))
        override = self.per_method[method]
        for key in sorted(map(str, override)):
            if key not in RANGE_KEYS:
                raise ValueError(f"{where}: '{key}' cannot differ by method; {where} accepts "
                                 f"{', '.join(RANGE_KEYS)}: remove '{key}'")
        self.for_method(method)

    def for_method(self, method: str) -> SpaceParam:
        """This knob as `method` sees it: its `per_method` range and default over the shared ones."""
        override = self.per_method.get(method)
        if not override:
            return self.model_copy(update={"per_method": {}})
        base = {k: v for k, v in self.model_dump().items() if k != "per_method"}
        try:
            return SpaceParam.model_validate({**base, **override})
        except ValidationError as err:
            problem = err.errors()[0]["msg"].removeprefix("Value error, ")
            if problem.startswith("default") and "default" not in override:
                problem = f"the knob's {problem}: give per_method.{method} its own default"
            raise ValueError(f"per_method.{method}: {problem}") from None

    def value(self, method: str | None = None) -> Any:
        """The value a single run (of `method`, when given) uses: `default`, else the middle of the
        range or the first choice; `method`'s own range and default where `per_method` has them."""
        if method is not None and method in self.per_method:
            return self.for_method(method).value()
        if self.default is not None:
            return int(self.default) if self.type == "int" else self.default
        if self.type == "categorical":
            return self.choices[0]
        if self.log:
            mid = (self.low * self.high) ** 0.5
        else:
            mid = (self.low + self.high) / 2
        return int(round(mid)) if self.type == "int" else mid

