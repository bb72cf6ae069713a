"""How a trial ended, decided in one place for Optuna, MLflow and the progress lines.

Four outcomes, because a reader of the front must be able to trust that only full-budget
results compete:

* COMPLETE: ran every epoch; its final values are the Optuna trial's values and may be on the front.
* PRUNED: stopped early by the scheduler (ASHA); its partial values are kept as attributes for
  reading, never as values, so neither the sampler nor the front takes them for a result.
* FAIL: the training itself failed (a diverged loss, data or settings the worker refused). Such a
  failure is deterministic, so it is recorded once, never retried.
* INTERRUPTED: the driver stopped (Ctrl-C, SIGTERM, a crash) before the trial ended. The Optuna
  trial goes back to WAITING with its last checkpoint, and ``--resume`` finishes it under the
  same trial number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["COMPLETE", "PRUNED", "FAIL", "INTERRUPTED"]

FINISHED_KEY = "finished"
"""1.0 in the result of a trial's last epoch (lorsp.train)."""
FAILED_KEY = "failed"
"""1.0 in the one result a trial reports when its training raised (lorsp.trial)."""
ERROR_KEY = "error"
TRACEBACK_KEY = "error_traceback"

_MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}
_OPTUNA_STATE = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "FAIL": "FAIL", "INTERRUPTED": "WAITING"}


@dataclass(frozen=True)
class Outcome:
    state: State
    epochs: int
    error: str | None = None

    @property
    def mlflow_status(self) -> str:
        return _MLFLOW_STATUS[self.state]

    @property
    def optuna_state(self) -> str:
        """The Optuna `TrialState` name: an interrupted trial waits to be resumed."""
        return _OPTUNA_STATE[self.state]

    @property
    def reason(self) -> str:
        """One phrase for people: the progress line, the MLflow `end_reason` tag."""
        if self.state == "COMPLETE":
            return "ran its full budget"
        if self.state == "PRUNED":
            return f"stopped early by the scheduler after epoch {self.epochs}"
        if self.state == "INTERRUPTED":
            return f"interrupted after epoch {self.epochs}; --resume continues it"
        return f"failed: {self.error or 'see the trial log'}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def outcome_of(result: Mapping[str, Any] | None, *, errored: bool = False, interrupted: bool = False) -> Outcome:
    """The outcome of a Tune trial from its last result.

    `errored`: Tune gave up on the trial (its process kept dying). `interrupted`: the driver is
    stopping and the trial did not end on its own.
    """
    result = result or {}
    epochs = int(_number(result.get("epoch")) or 0)
    if _number(result.get(FAILED_KEY)) == 1.0:
        return Outcome("FAIL", epochs, str(result.get(ERROR_KEY) or "training failed"))
    if _number(result.get(FINISHED_KEY)) == 1.0:
        return Outcome("COMPLETE", epochs)
    if errored:
        return Outcome("FAIL", epochs, str(result.get(ERROR_KEY) or "the trial's process failed repeatedly"))
    if interrupted:
        return Outcome("INTERRUPTED", epochs)
    return Outcome("PRUNED", epochs)


def outcome_of_state(state: str, epochs: int, error: str | None = None) -> Outcome | None:
    """The outcome of a stored Optuna trial (None while it runs)."""
    if state == "WAITING":
        return Outcome("INTERRUPTED", epochs)
    if state in ("COMPLETE", "PRUNED", "FAIL"):
        return Outcome(state, epochs, error)  # type: ignore[arg-type]
    return None
