"""Is any method's best configuration pinned at an edge of its range?

A comparison is fair only if no method was searched in a range that cuts off its good values: a
method whose best trial sits at the top of its learning-rate range would probably do better above
it, so its point on the front understates it. This module reads a finished study and says, for each
method, where its best full-budget trial's numeric knobs sit inside the range that method was
searched in (its `per_method` range where it has one).

Only numeric knobs are checked; a categorical choice has no edge. A value counts as at an edge when
it lies within `tolerance` of the range's width from that end, measured on the knob's own scale
(log for a log knob), or, for an int knob, equals the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lorsp.config import SpaceParam, StudyConfig
from lorsp.metrics import is_finite_number
from lorsp.pareto import TrialRecord

TOLERANCE = 0.05


@dataclass(frozen=True)
class EdgeCheck:
    """Where one knob of one method's best trial sits in that method's range."""

    method: str
    trial: int
    knob: str
    value: float
    low: float
    high: float
    position: float  # 0 at `low`, 1 at `high`, on the knob's scale
    edge: str | None  # "low", "high" or None
    top_at_edge: int  # how many of the method's top trials sit at the same edge
    top: int  # how many top trials were looked at

    @property
    def pinned(self) -> bool:
        return self.edge is not None


def position_in(knob: SpaceParam, value: float) -> float:
    """`value`'s place in the knob's range, 0 at `low` and 1 at `high`, on its own scale."""
    low, high = float(knob.low), float(knob.high)
    if high == low:
        return 0.5
    if knob.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def edge_of(knob: SpaceParam, value: float, tolerance: float = TOLERANCE) -> str | None:
    """"low" or "high" when `value` sits at that end of the knob's range, else None."""
    if knob.type == "int":
        if value <= knob.low:
            return "low"
        return "high" if value >= knob.high else None
    position = position_in(knob, value)
    if position <= tolerance:
        return "low"
    return "high" if position >= 1 - tolerance else None


def method_of(study: StudyConfig, record: TrialRecord) -> str:
    """The method a trial ran: its sampled `method`, else the study's fixed one."""
    return str(record.params.get("method", study.prompt.method))


def range_edges(study: StudyConfig, records: Sequence[TrialRecord], *, metric: str = "val_acc",
                top: int = 3, tolerance: float = TOLERANCE) -> list[EdgeCheck]:
    """For each method, each numeric knob of its best full-budget trial by `metric` (higher is
    better): where it sits in that method's range, and how many of the method's `top` trials sit
    at the same edge (one trial at an edge may be noise; all of them is a range to widen)."""
    by_method: dict[str, list[TrialRecord]] = {}
    for record in records:
        if record.state == "COMPLETE" and is_finite_number(record.values.get(metric)):
            by_method.setdefault(method_of(study, record), []).append(record)
    checks = []
    for method, trials in by_method.items():
        ranked = sorted(trials, key=lambda r: (-r.values[metric], r.number))[:top]
        best = ranked[0]
        for name, knob in study.space.items():
            if knob.type == "categorical" or name not in best.params:
                continue
            own = knob.for_method(method)
            value = float(best.params[name])
            edge = edge_of(own, value, tolerance)
            same = sum(1 for r in ranked if name in r.params
                       and edge is not None and edge_of(own, float(r.params[name]), tolerance) == edge)
            checks.append(EdgeCheck(method, best.number, name, value, float(own.low), float(own.high),
                                    position_in(own, value), edge, same, len(ranked)))
    return checks


def describe(checks: Sequence[EdgeCheck]) -> list[str]:
    """One line per knob, the pinned ones first, for the console and the closing note of a study."""
    lines = []
    for c in sorted(checks, key=lambda c: (not c.pinned, c.method, c.knob)):
        where = (f"AT THE {c.edge.upper()} EDGE ({c.top_at_edge} of its top {c.top} there)" if c.pinned
                 else f"inside ({c.position:.0%} of the way up)")
        lines.append(f"{c.method:>10} trial {c.trial:>3}  {c.knob} = {_num(c.value)} in "
                     f"[{_num(c.low)}, {_num(c.high)}]: {where}")
    return lines


def _num(value: float) -> str:
    return f"{value:.4g}"
