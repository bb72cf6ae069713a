"""What every section of the study file shares: unknown keys refused, assignments validated, and the
one-line "did you mean" hint for a value that is not one of the choices."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def unknown(key: str, value: str, choices: Any, what: str = "value") -> str:
    """``unknown value 'x' for key (did you mean 'y'?): choose one of ...``, one line."""
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"unknown {what} '{value}' for {key}{suggestion}: choose one of {', '.join(map(str, choices))}"
