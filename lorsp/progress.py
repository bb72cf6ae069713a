"""What a person watching a study sees: one line per ended trial and the Pareto table at the end.

Plain lines rather than a live bar: under `ray job submit` the output is a log, not a terminal.
A failed trial gets one line with its reason; its traceback goes to its MLflow run and trial log.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from lorsp.config import StudyConfig
from lorsp.keys import TRIAL_KEY
from lorsp.outcome import outcome_of
from lorsp.pareto import TrialRecord


class ProgressCallback(Callback):
    """Counts trials done / running / stopped early / failed and tracks the best value of each objective."""

    def __init__(self, study: StudyConfig, total: int) -> None:
        self.objectives = [(o.metric, o.mode) for o in study.objectives]
        self.total = total
        self.started = time.perf_counter()
        self.running: set[str] = set()
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.best: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, errored=True)

    def _ended(self, trial: Any, errored: bool) -> None:
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        outcome = outcome_of(result, errored=errored)
        self.counts[outcome.state] = self.counts.get(outcome.state, 0) + 1
        if outcome.state == "COMPLETE":
            for metric, mode in self.objectives:
                value = result.get(metric)
                if isinstance(value, (int, float)):
                    old = self.best.get(metric)
                    better = old is None or (value > old if mode == "max" else value < old)
                    self.best[metric] = value if better else old
        config = trial.config or {}
        number = (config.get(TRIAL_KEY) or {}).get("number")
        name = f"trial {number}" if number is not None else f"trial {trial.trial_id}"
        if "method" in config:
            name += f" ({config['method']})"
        shown = "" if outcome.state == "FAIL" else "  " + "  ".join(
            f"{m} {result[m]:.4g}" for m, _ in self.objectives if isinstance(result.get(m), (int, float)))
        best = "  ".join(f"{m} {v:.4g}" for m, v in self.best.items())
        ended = sum(self.counts.values())
        c = self.counts
        print(
            f"[{ended}/{self.total} ended: {c['COMPLETE']} full, {c['PRUNED']} stopped, {c['FAIL']} failed; "
            f"{len(self.running)} running; {time.perf_counter() - self.started:.0f}s] "
            f"{name} {outcome.reason}{shown}" + (f"  | best: {best}" if best else ""),
            flush=True,
        )


def print_pareto_table(study: StudyConfig, records: list[TrialRecord]) -> None:
    """The end-of-search summary: counts, hypervolume and the table of Pareto-optimal trials."""
    from lorsp.metrics import is_bounded
    from lorsp.pareto import summarise
    from lorsp.report import print_front

    objectives = [(o.metric, o.mode) for o in study.objectives]
    print_front(study.name, records, summarise(records, objectives, is_bounded))
