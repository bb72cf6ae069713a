"""What seed confirmations say: the runs kept in the study's storage, each configuration's mean
and interval, and the front on the means (`confirmed`).

The reading and judging half of :mod:`lorsp.confirm` (which trains the seeds), apart so that the
Pareto tool (:mod:`lorsp.fronts`) shows the confirmed columns without importing a command that
starts Ray. No Ray, no MLflow; Optuna only through the stored study passed in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from lorsp.config import StudyConfig
from lorsp.pareto import TrialRecord, non_dominated_ranks

RESULT_PREFIX = "confirm:"
"""Study user attribute `confirm:<trial>:<seed>` = the metrics of that re-training (JSON)."""
REPORTED = ("test_acc",)
"""Reported beside the objectives, never used to decide `confirmed`."""
LEVEL = 0.95


def fresh_seeds(study: StudyConfig, count: int) -> list[int]:
    """The confirmation seeds: the next `count` after the study's own `train.seed`, which the
    search used. Fixed, so that asking for more seeds later extends the same list."""
    return [study.train.seed + k for k in range(1, count + 1)]


def mean_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean at `level` (two-sided).

    A constant metric (parameter counts) has a zero-width interval; with one value the interval
    is unbounded (nothing is known of the spread).
    """
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, -math.inf, math.inf
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass
class Confirmation:
    """One configuration of the study, re-trained with several seeds."""

    trial: int
    params: dict[str, Any]
    original: dict[str, float]
    runs: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> metrics
    intervals: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    confirmed: bool | None = None

    @property
    def ok_seeds(self) -> list[int]:
        return sorted(s for s, m in self.runs.items() if not m.get("failed"))


# ---------------------------------------------------------------- stored results
def stored_results(found: Any) -> dict[tuple[int, int], dict[str, float]]:
    """(trial, seed) -> metrics of every confirmation run kept in the Optuna study."""
    out = {}
    for key, value in found.user_attrs.items():
        if key.startswith(RESULT_PREFIX):
            _, trial, seed = key.split(":")
            out[int(trial), int(seed)] = value if isinstance(value, dict) else json.loads(value)
    return out


def store_result(found: Any, trial: int, seed: int, metrics: dict[str, float]) -> None:
    found.set_user_attr(f"{RESULT_PREFIX}{trial}:{seed}", metrics)


def judge(study: StudyConfig, confirmations: list[Confirmation]) -> list[Confirmation]:
    """Means and intervals per configuration, then the front on the means: `confirmed` marks the
    configurations that stay Pareto-optimal once each is judged by its mean over fresh seeds."""
    objectives = [(o.metric, o.mode) for o in study.objectives]
    names = [m for m, _ in objectives] + [m for m in REPORTED if m not in {m for m, _ in objectives}]
    judged = []
    for c in confirmations:
        good = [c.runs[s] for s in c.ok_seeds]
        c.intervals = {m: mean_interval([r[m] for r in good]) for m in names if good and all(m in r for r in good)}
        c.confirmed = None
        if all(m in c.intervals for m, _ in objectives):
            judged.append(c)
    if judged:
        means = [[c.intervals[m][0] for m, _ in objectives] for c in judged]
        ranks = non_dominated_ranks(means, [mode for _, mode in objectives])
        for c, rank in zip(judged, ranks):
            c.confirmed = bool(rank == 0)
    return confirmations


def chosen_trials(records: list[TrialRecord], top: int | None) -> list[TrialRecord]:
    """The Pareto-optimal trials, or the `top` full-budget trials by validation accuracy."""
    complete = [r for r in records if r.state == "COMPLETE"]
    if top:
        return sorted(complete, key=lambda r: (-r.values.get("val_acc", -math.inf), r.number))[:top]
    return sorted((r for r in complete if r.pareto), key=lambda r: r.number)


def load_confirmations(study: StudyConfig, found: Any, records: list[TrialRecord],
                       top: int | None = None) -> list[Confirmation]:
    """Every chosen configuration with the seeds already done (from the storage), judged."""
    results = stored_results(found)
    chosen = chosen_trials(records, top)
    out = [Confirmation(r.number, dict(r.params), dict(r.values),
                        {seed: m for (trial, seed), m in results.items() if trial == r.number}) for r in chosen]
    return judge(study, out)


def confirmed_columns(study: StudyConfig, found: Any, records: list[TrialRecord]) -> dict[int, dict[str, Any]]:
    """For the Pareto table: trial -> {"seeds", "<metric> mean±ci", "confirmed"}, for confirmed configs."""
    results = stored_results(found)
    if not results:
        return {}
    trials = sorted({t for t, _ in results})
    by_number = {r.number: r for r in records}
    confirmations = judge(study, [
        Confirmation(t, dict(by_number[t].params), dict(by_number[t].values),
                     {s: m for (tt, s), m in results.items() if tt == t}) for t in trials if t in by_number])
    return {c.trial: c for c in confirmations}
