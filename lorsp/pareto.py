"""Pareto selection over a study's objectives.

Only trials that ran their full training budget take part: a trial that ASHA stopped after two
epochs reports the accuracy of two epochs, and putting it on the front beside trials that trained
for twenty would compare unlike things (Optuna itself records such trials as COMPLETE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def _as_minimisation(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    signs = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    return np.asarray(values, dtype=float) * signs


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """True when `a` is at least as good as `b` in every objective and better in one."""
    x, y = _as_minimisation(np.array([a]), modes)[0], _as_minimisation(np.array([b]), modes)[0]
    return bool(np.all(x <= y) and np.any(x < y))


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
    """One finished search trial as the Pareto step and the tables see it."""

    number: int
    params: dict[str, Any]
    values: dict[str, float]
    full_budget: bool
    state: str
    attrs: dict[str, Any] = field(default_factory=dict)
    pareto_rank: int | None = None

    @property
    def pareto(self) -> bool:
        return self.pareto_rank == 0


def rank_trials(trials: list[TrialRecord], objectives: Sequence[tuple[str, str]]) -> list[TrialRecord]:
    """Set `pareto_rank` on every full-budget complete trial; others keep None (never on the front)."""
    eligible = [t for t in trials if t.state == "COMPLETE" and t.full_budget
                and all(m in t.values for m, _ in objectives)]
    for t in trials:
        t.pareto_rank = None
    if eligible:
        values = np.array([[t.values[m] for m, _ in objectives] for t in eligible])
        for t, r in zip(eligible, non_dominated_ranks(values, [mode for _, mode in objectives])):
            t.pareto_rank = int(r)
    return trials
