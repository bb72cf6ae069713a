"""Pareto-aware asynchronous successive halving, as a Ray Tune scheduler (`search.scheduler.type: pareto_asha`).

ASHA's schedule, multi-objective ranking: the rungs are ASHA's (`grace_period`·η^k epochs, the same
epochs :meth:`lorsp.config.SchedulerConfig.stop_epochs` gives the trials, so a trial stopped at a
rung has its prompt gallery in the checkpoint it ends on), and a trial is judged once, when it first
reaches a rung, against the trials that reached that rung before it: it goes on when it is among the
top ⌈n/η⌉ by the rule of :mod:`lorsp.pareto.halving` (non-dominated rank on every objective of the
study, then crowding distance on normalised values). Decisions are made as results arrive; nothing
waits for a rung to fill.

A stopped trial ends like one of ASHA's: PRUNED in Optuna (its partial values are attributes, never
values) and KILLED in MLflow, with the epoch of its rung in `end_reason` (:mod:`lorsp.outcome`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from lorsp.config import StudyConfig
from lorsp.metrics import METRICS
from lorsp.pareto.halving import Bounds, survives


class ParetoASHA(FIFOScheduler):
    def __init__(self, objectives: Sequence[tuple[str, str]], milestones: Sequence[int], reduction_factor: float,
                 time_attr: str = "epoch") -> None:
        super().__init__()
        self.objectives = list(objectives)
        self.modes = [mode for _, mode in self.objectives]
        self.bounds: list[Bounds] = [(0.0, 1.0) if name in METRICS and METRICS[name].bounded else None
                                     for name, _ in self.objectives]
        self.reduction_factor = reduction_factor
        self.time_attr = time_attr
        # Highest rung first, as ASHA: a trial is judged at the highest rung it has reached and not yet passed.
        self.rungs: list[tuple[int, dict[str, list[float]]]] = [(m, {}) for m in sorted(set(milestones), reverse=True)]
        self.stopped = 0

    @classmethod
    def for_study(cls, study: StudyConfig) -> ParetoASHA:
        s = study.search.scheduler
        assert s is not None
        epochs = study.train.epochs
        # A rung at the last epoch decides nothing: the trial has finished there.
        milestones = [m for m in s.stop_epochs(epochs) if m < epochs]
        return cls([(o.metric, o.mode) for o in study.objectives], milestones, s.reduction_factor)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # the objectives come from the study, not from Tune's single metric

    def decide(self, trial_id: str, epoch: float, values: Sequence[float]) -> str:
        """CONTINUE or STOP for a trial that reports `values` (the objectives, in order) after `epoch`."""
        for milestone, recorded in self.rungs:
            if epoch < milestone:
                continue
            if trial_id in recorded:
                break  # judged at this rung already (a retried trial reports its epochs again)
            recorded[trial_id] = [float(v) for v in values]
            ids = list(recorded)
            population = np.array([recorded[i] for i in ids], dtype=float)
            if not survives(population, ids.index(trial_id), self.modes, self.bounds, self.reduction_factor):
                self.stopped += 1
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def _values(self, result: dict[str, Any]) -> list[float] | None:
        if self.time_attr not in result:
            return None
        values = [result.get(name) for name, _ in self.objectives]
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in values):
            return None  # a failed trial's one result carries no objectives
        return [float(v) for v in values]  # type: ignore[arg-type]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        values = self._values(result)
        if values is None:
            return TrialScheduler.CONTINUE
        return self.decide(trial.trial_id, result[self.time_attr], values)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        values = self._values(result or {})
        if values is not None:
            self.decide(trial.trial_id, result[self.time_attr], values)  # a finished trial counts at its rungs

    def debug_string(self) -> str:
        sizes = ", ".join(f"epoch {m}: {len(r)}" for m, r in reversed(self.rungs))
        return f"ParetoASHA: {self.stopped} stopped; trials per rung: {sizes}"
