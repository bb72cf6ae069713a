"""What a person watching a study sees: one line per finished trial and the Pareto table at the end.

Plain lines rather than a live bar: under `ray job submit` the output is a log, not a terminal.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from lorsp.config import StudyConfig
from lorsp.pareto import TrialRecord


class ProgressCallback(Callback):
    """Counts trials done / running / stopped early / failed and tracks the best value of each objective."""

    def __init__(self, study: StudyConfig, total: int) -> None:
        self.objectives = [(o.metric, o.mode) for o in study.objectives]
        self.max_t = study.train.epochs
        self.total = total
        self.started = time.perf_counter()
        self.running: set[str] = set()
        self.done = self.stopped = self.failed = 0
        self.best: dict[str, float] = {}
        self.first_result: dict[str, float] = {}
        self.trial_start: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self.trial_start[trial.trial_id] = time.perf_counter()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.first_result.setdefault(trial.trial_id, time.perf_counter() - self.trial_start.get(trial.trial_id, self.started))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        full = bool(result.get("finished"))
        if full:
            self.done += 1
            for metric, mode in self.objectives:
                if metric in result:
                    old = self.best.get(metric)
                    better = old is None or (result[metric] > old if mode == "max" else result[metric] < old)
                    self.best[metric] = result[metric] if better else old
        else:
            self.stopped += 1
        what = "finished" if full else f"stopped early after epoch {int(result.get('epoch', 0))}"
        self._line(trial, what, result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._line(trial, "FAILED", {})

    def _line(self, trial: Any, what: str, result: dict) -> None:
        shown = "  ".join(f"{m} {result[m]:.4g}" for m, _ in self.objectives if isinstance(result.get(m), (int, float)))
        best = "  ".join(f"{m} {v:.4g}" for m, v in self.best.items())
        ended = self.done + self.stopped + self.failed
        print(
            f"[{ended}/{self.total} ended: {self.done} full, {self.stopped} stopped, {self.failed} failed; "
            f"{len(self.running)} running; {time.perf_counter() - self.started:.0f}s] "
            f"trial {trial.trial_id} {what}  {shown}" + (f"  | best: {best}" if best else ""),
            flush=True,
        )


def print_pareto_table(study: StudyConfig, records: list[TrialRecord]) -> None:
    """The end-of-search summary: counts, hypervolume and the table of Pareto-optimal trials."""
    from lorsp.pareto import print_front, summarise

    print_front(study.name, records, summarise(records, [(o.metric, o.mode) for o in study.objectives]))
