"""The rule of Pareto-aware successive halving: which trials of a rung go on.

ASHA ranks a rung by one metric, so on `val_acc` it stops exactly the trials a multi-objective
search exists to find: those that give up a little accuracy for a much sparser prompt. Here the
trials that reached a rung are ordered by

1. non-dominated rank on all the study's objectives (the Pareto front first), then
2. inside a front, crowding distance (NSGA-II's), larger first, then
3. among trials of equal distance (in practice the extremes, all at infinity), the number of
   objectives on which the trial is the front's best, more first, then
4. arrival order (earlier first), so a decision is deterministic.

Why the third key: with three objectives a small rung's front is mostly extremes, so crowding
distance alone leaves arrival order to decide, and a linear probe (the best density *and* the fewest
parameters, the point that adds most hypervolume) was stopped at epoch 1 behind a prompt that was
merely the densest: measured in benchmarks/README.md.

Crowding distance rather than hypervolume contribution: it needs no reference point (a rung has no
principled one: values are partial, and a parameter count has no natural worst), it costs a sort per
objective, and it gives each front's extremes an infinite distance, so the sparsest and the most
accurate trial of the rung's front always go on: the ends of the front survive.

Objectives are normalised before the distance is measured: by their known bounds where they have
them (accuracy and density live in [0, 1]) and otherwise by the range seen at the rung, so an
objective with a large scale (a parameter count in the thousands) does not decide alone, and
multiplying it by any constant changes nothing. Non-dominated rank needs no normalisation: it is
unchanged by any increasing transform of an objective.

Pure numpy, no Ray: the rule is held by fast tests; :mod:`lorsp.schedulers` applies it as trials arrive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lorsp.pareto import _as_minimisation, non_dominated_ranks

Bounds = tuple[float, float] | None
"""Known (worst-to-best-agnostic) range of an objective, or None to use the range seen at the rung."""


def normalise(values: np.ndarray, bounds: Sequence[Bounds]) -> np.ndarray:
    """Each column mapped to [0, 1]: by its known bounds, else by its finite min and max (0 when flat)."""
    values = np.asarray(values, dtype=float)
    out = np.zeros_like(values)
    for m, known in enumerate(bounds):
        column = values[:, m]
        finite = column[np.isfinite(column)]
        lo, hi = known if known is not None else ((finite.min(), finite.max()) if finite.size else (0.0, 0.0))
        out[:, m] = (column - lo) / (hi - lo) if hi > lo else 0.0
    return out


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of one front (normalised values): the sum over objectives
    of the gap between its two neighbours; the extremes of an objective that varies get infinity."""
    n, dims = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for m in range(dims):
        order = np.argsort(points[:, m], kind="stable")
        column = points[order, m]
        if column[-1] == column[0]:
            continue  # an objective on which the front does not differ says nothing about spread
        distance[order[0]] = distance[order[-1]] = np.inf
        distance[order[1:-1]] += column[2:] - column[:-2]
    return distance


def best_ends(points: np.ndarray) -> np.ndarray:
    """For each row of one front (minimisation-oriented values): on how many objectives it is the
    front's best (ties all count), objectives on which the front does not differ left out."""
    counts = np.zeros(len(points), dtype=int)
    for m in range(points.shape[1]):
        column = points[:, m]
        if column.max() > column.min():
            counts += column == column.min()
    return counts


def promotion_order(values: np.ndarray, modes: Sequence[str], bounds: Sequence[Bounds]) -> list[int]:
    """Row indices of `values` (one row per trial, in arrival order), best first.

    A row with a missing or non-finite objective ranks after every complete row.
    """
    values = np.asarray(values, dtype=float).reshape(len(values), len(modes))
    n = len(values)
    complete = np.isfinite(values).all(axis=1)
    rank = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    crowd = np.zeros(n)
    ends = np.zeros(n, dtype=int)
    if complete.any():
        rank[complete] = non_dominated_ranks(values[complete], modes)
        # Distances on the minimisation-oriented, normalised values (orientation does not change gaps).
        norm = normalise(_as_minimisation(values, modes), [_oriented(b, m) for b, m in zip(bounds, modes)])
        for r in np.unique(rank[complete]):
            members = np.flatnonzero(rank == r)
            crowd[members] = crowding_distance(norm[members])
            ends[members] = best_ends(norm[members])
    return sorted(range(n), key=lambda i: (rank[i], -crowd[i], -ends[i], i))


def _oriented(bounds: Bounds, mode: str) -> Bounds:
    """Known bounds of an objective after :func:`_as_minimisation` flipped the sign of a `max` one."""
    if bounds is None or mode != "max":
        return bounds
    return (-bounds[1], -bounds[0])


def survives(values: np.ndarray, newcomer: int, modes: Sequence[str], bounds: Sequence[Bounds],
             reduction_factor: float) -> bool:
    """Whether the trial in row `newcomer` is among the top ⌈n/η⌉ of the n trials that reached the rung.

    As in ASHA, a trial is judged once, when it reaches the rung, against the trials that reached it
    before: the first to arrive always goes on, and a rung keeps about 1/η of its trials.
    """
    keep = max(1, math.ceil(len(values) / reduction_factor))
    return newcomer in promotion_order(values, modes, bounds)[:keep]
