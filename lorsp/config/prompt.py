"""The study file's `prompt` section, derived from the methods' declarations (:mod:`lorsp.methods`).

Its keys are `method` and every knob some registered method declares, each checked against its
declared type and range and, when left out, set to its declared default; so a method registered by
a plugin (`plugins:` in the study file) brings its knobs into the section with nothing to edit here.
Every problem is one line naming the key (`prompt.rank: must be an integer >= 1, got 0`), as the
fixed sections' are.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from lorsp.config.base import _Section
from lorsp.methods import LORSP_MODE, knobs, method_names, unknown_method

#: The method a study runs when its file names none.
DEFAULT_METHOD = "lorsp"
#: ``prompt.lorsp_mode`` choices (see docs/methods.md), as :data:`lorsp.methods.LORSP_MODE` declares them.
LORSP_MODES: tuple[str, ...] = LORSP_MODE.choices
#: pydantic error type of a problem with one key of the section; its context names the key, so that
#: the one-line report says `prompt.rank:` rather than `prompt:` (:func:`lorsp.config.study._format_error`)
KEY_ERROR = "prompt_key"


def _problem(key: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(KEY_ERROR, "{message}", {"key": key, "message": message})


class PromptConfig(_Section):
    """`method` and the knobs of every registered method; each method reads only the ones it declares.

    The knobs are not fields of this class, since plugins declare more at run time: they are kept
    as the model's extra values (``prompt.rank`` and ``model_dump()`` work as for fields), filled in
    and checked by :meth:`_declared_knobs`. An unknown key is refused as in every other section.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    method: str = DEFAULT_METHOD

    @model_validator(mode="before")
    @classmethod
    def _declared_knobs(cls, data: Any) -> Any:
        if isinstance(data, PromptConfig):
            data = data.model_dump()
        if not isinstance(data, dict):
            return data  # pydantic's own message says a mapping is needed
        name = data.get("method", DEFAULT_METHOD)
        if name not in method_names():
            raise _problem("method", unknown_method(name))
        declared = knobs()
        for key in sorted(map(str, data)):
            if key != "method" and key not in declared:
                raise _problem(key, f"unknown key; remove it or use one of: method, {', '.join(declared)}")
        out: dict[str, Any] = {"method": name}
        for key, knob in declared.items():
            if key not in data:
                out[key] = knob.default
                continue
            problem = knob.problem(data[key])
            if problem:
                raise _problem(key, f"{problem}; fix the value in the study file or --set")
            out[key] = knob.check(data[key])
        return out

    def __setattr__(self, name: str, value: Any) -> None:
        # Extra values are not validated on assignment by pydantic: check a knob as the file's would be.
        knob = knobs().get(name)
        if knob is not None:
            value = knob.check(value)
        super().__setattr__(name, value)


def prompt_keys() -> tuple[str, ...]:
    """The keys the `prompt` section accepts now (the registered methods' knobs and `method`)."""
    return ("method", *knobs())
