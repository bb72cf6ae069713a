"""Pareto selection over a study's objectives.

Only trials that ran their full training budget (state COMPLETE) take part: a trial that ASHA
stopped after two epochs (PRUNED) reports the accuracy of two epochs, and putting it on the front
beside trials that trained for twenty would compare unlike things.

Pure maths on numpy: this package imports nothing of lorsp, so every other module may use it and
it climbs back up to none. What it must know about a metric (whether it lives in [0, 1], for the
hypervolume's reference point) the caller passes in, e.g. :func:`lorsp.metrics.is_bounded`. The
command line that shows a stored study's front is :mod:`lorsp.fronts` (``python -m lorsp.pareto``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Bounded = Callable[[str], bool]
"""Whether a metric lives in [0, 1] by construction (its worst and best values known in advance)."""


def _as_minimisation(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    signs = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    return np.asarray(values, dtype=float) * signs


def non_dominated_ranks(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Rank 0 for the Pareto front, 1 for the front once rank 0 is removed, and so on.

    Plain O(M·N²) sorting: a study has hundreds of trials at most, so clarity wins over the
    bookkeeping of the fast variant.
    """
    points = _as_minimisation(np.asarray(values, dtype=float).reshape(len(values), -1), modes)
    n = len(points)
    ranks = np.full(n, -1, dtype=int)
    if n == 0:
        return ranks
    better_eq = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    strictly = np.any(points[:, None, :] < points[None, :, :], axis=2)
    dom = better_eq & strictly  # dom[i, j]: i dominates j
    remaining = np.ones(n, dtype=bool)
    rank = 0
    while remaining.any():
        dominated = (dom & remaining[:, None]).any(axis=0)
        front = remaining & ~dominated
        ranks[front] = rank
        remaining &= ~front
        rank += 1
    return ranks


def hypervolume(values: np.ndarray, modes: Sequence[str], reference: Sequence[float]) -> float:
    """Volume dominated by `values` and bounded by `reference` (a point worse than all of them).

    Exact, by recursive slicing on the first objective (fine for the 2–4 objectives and the few
    dozen front points of a study).
    """
    pts = _as_minimisation(np.asarray(values, dtype=float).reshape(len(values), -1), modes)
    ref = _as_minimisation(np.asarray([reference], dtype=float), modes)[0]
    pts = pts[np.all(pts < ref, axis=1)]
    return _hv(pts, ref)


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    order = np.argsort(pts[:, 0])
    pts = pts[order]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, 0] if i + 1 < len(pts) else ref[0]
        width = upper - pts[i, 0]
        if width > 0:
            volume += width * _hv(pts[: i + 1, 1:], ref[1:])
    return float(volume)


@dataclass
class TrialRecord:
    """One trial of a study as the Pareto step, the tables and MLflow see it.

    `state` is the Optuna state: COMPLETE (full budget), PRUNED (stopped early), FAIL, WAITING
    (interrupted, resumable) or RUNNING. `values` holds the objectives of a COMPLETE trial and
    every other metric the trial reported last (partial ones for a PRUNED trial).
    """

    number: int
    params: dict[str, Any]
    values: dict[str, float]
    state: str
    epochs_done: int = 0
    tune_trial_id: str | None = None
    checkpoint_path: str | None = None
    error: str | None = None
    interruptions: int = 0
    pareto_rank: int | None = None

    @property
    def pareto(self) -> bool:
        return self.pareto_rank == 0

    @property
    def full_budget(self) -> bool:
        return self.state == "COMPLETE"


def rank_trials(trials: list[TrialRecord], objectives: Sequence[tuple[str, str]]) -> list[TrialRecord]:
    """Set `pareto_rank` on every COMPLETE trial; others keep None (never on the front)."""
    eligible = [t for t in trials if t.state == "COMPLETE" and all(m in t.values for m, _ in objectives)]
    for t in trials:
        t.pareto_rank = None
    if eligible:
        values = np.array([[t.values[m] for m, _ in objectives] for t in eligible])
        for t, r in zip(eligible, non_dominated_ranks(values, [mode for _, mode in objectives])):
            t.pareto_rank = int(r)
    return trials


# ---------------------------------------------------------------- reference point and summaries
REFERENCE_RULE = (
    "worst value per objective: 0 for a maximised [0,1] metric (val_acc), 1 for a minimised [0,1] "
    "metric (prompt_density, firing_rate), 1.1 x the largest value among eligible trials for an "
    "unbounded minimised metric (trainable_params), 0 for an unbounded maximised one"
)


def reference_point(objectives: Sequence[tuple[str, str]], values: np.ndarray, bounded: Bounded) -> np.ndarray:
    """The hypervolume reference: a point no trial can be worse than (see :data:`REFERENCE_RULE`).

    Bounded metrics use their natural worst value, so the hypervolume of a [0,1]-only study is
    comparable across studies. An unbounded metric has no natural worst value: the largest value
    seen times 1.1 keeps every eligible trial strictly inside the box (a trial *on* the
    reference contributes no volume), and is logged next to the hypervolume so that two numbers
    are only compared when their references agree.
    """
    values = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    ref = []
    for j, (metric, mode) in enumerate(objectives):
        column = values[:, j] if len(values) else np.zeros(1)
        if bounded(metric):
            ref.append(0.0 if mode == "max" else 1.0)
        elif mode == "min":
            top = float(np.max(column))
            ref.append(top * 1.1 if top > 0 else (1.0 if top == 0 else top * 0.9))
        else:
            low = float(np.min(column))
            ref.append(0.0 if low >= 0 else low * 1.1)
    return np.array(ref, dtype=float)


def ideal_point(objectives: Sequence[tuple[str, str]], values: np.ndarray, bounded: Bounded) -> np.ndarray:
    """Best conceivable value per objective (1 / 0 for [0,1] metrics, 0 for a minimised count)."""
    values = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    ideal = []
    for j, (metric, mode) in enumerate(objectives):
        if bounded(metric):
            ideal.append(1.0 if mode == "max" else 0.0)
        elif mode == "min":
            ideal.append(min(0.0, float(np.min(values[:, j]))) if len(values) else 0.0)
        else:
            ideal.append(float(np.max(values[:, j])) if len(values) else 1.0)
    return np.array(ideal, dtype=float)


@dataclass
class FrontSummary:
    """What the Pareto step reports about a study: the front, its hypervolume and the reference."""

    objectives: list[tuple[str, str]]
    eligible: list[TrialRecord]
    front: list[TrialRecord]
    reference: np.ndarray
    hypervolume: float
    hypervolume_normalised: float

    def reference_text(self) -> str:
        return ", ".join(f"{m}={_short(v)}" for (m, _), v in zip(self.objectives, self.reference))


def _matrix(records: list[TrialRecord], objectives: Sequence[tuple[str, str]]) -> np.ndarray:
    """The objectives of `records` as a [trials, objectives] array (empty rows allowed)."""
    rows = [[r.values[m] for m, _ in objectives] for r in records]
    return np.array(rows, dtype=float).reshape(-1, len(objectives))


def summarise(records: list[TrialRecord], objectives: Sequence[tuple[str, str]], bounded: Bounded) -> FrontSummary:
    """Front, reference point and hypervolume (raw and normalised to the ideal-reference box);
    `bounded` says which metrics live in [0, 1] (:func:`lorsp.metrics.is_bounded`)."""
    objectives = [(m, mode) for m, mode in objectives]
    eligible = [r for r in records if r.pareto_rank is not None]
    front = sorted((r for r in eligible if r.pareto), key=lambda r: r.number)
    modes = [mode for _, mode in objectives]
    values = _matrix(eligible, objectives)
    ref = reference_point(objectives, values, bounded)
    front_values = _matrix(front, objectives)
    hv = hypervolume(front_values, modes, ref) if len(front) else 0.0
    box = float(np.prod(np.abs(ref - ideal_point(objectives, values, bounded))))
    return FrontSummary(objectives=objectives, eligible=eligible, front=front, reference=ref, hypervolume=hv,
                        hypervolume_normalised=hv / box if box > 0 else 0.0)


def _short(value: float) -> str:
    return f"{value:.6g}"


def group_key(params: dict[str, Any], by: Sequence[str]) -> str | None:
    """The group of a trial: its values of the parameters `by` that it has (e.g. `lorsp pixel`, or
    `lorvp`, which has no `lorsp_mode`); None when it lacks the first one."""
    if not by or by[0] not in params:
        return None
    return " ".join(str(params[name]) for name in by if name in params)


def group_fronts(records: list[TrialRecord], objectives: Sequence[tuple[str, str]],
                 by: Sequence[str]) -> dict[str, list[TrialRecord]]:
    """The Pareto front of each group of trials (e.g. one per method): which configurations are
    best *for that method*, whatever the other methods reach."""
    groups: dict[str, list[TrialRecord]] = {}
    for r in records:
        key = group_key(r.params, by)
        if r.state == "COMPLETE" and key is not None and all(m in r.values for m, _ in objectives):
            groups.setdefault(key, []).append(r)
    fronts = {}
    for key, group in groups.items():
        values = np.array([[r.values[m] for m, _ in objectives] for r in group], dtype=float)
        ranks = non_dominated_ranks(values, [mode for _, mode in objectives])
        fronts[key] = sorted((r for r, k in zip(group, ranks) if k == 0), key=lambda r: r.number)
    return fronts
