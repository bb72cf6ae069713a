"""The range-edge check that says whether a method was searched in a range that cuts off its best."""

from __future__ import annotations

from lorsp.config import load_study
from lorsp.edges import describe, edge_of, range_edges
from lorsp.pareto import TrialRecord
from tests.conftest import REPO

STUDY = load_study(REPO / "search_spaces" / "quickstart.yaml")


def _trial(number: int, method: str, acc: float, state: str = "COMPLETE", **params: float) -> TrialRecord:
    return TrialRecord(number, {"method": method, **params}, {"val_acc": acc}, state)


def test_the_probe_is_judged_in_its_own_range_not_the_prompts():
    # lr 0.25 is the top of the prompts' range but well inside the probe's own (per_method).
    prompts_top = STUDY.space["lr"].high
    records = [_trial(0, "none", 0.6, lr=prompts_top), _trial(1, "lorvp", 0.9, lr=prompts_top, rank=2)]
    checks = range_edges(STUDY, records)
    lr = {c.method: c for c in checks if c.knob == "lr"}
    assert lr["none"].edge is None and lr["none"].high == STUDY.space["lr"].per_method["none"]["high"]
    assert lr["lorvp"].edge == "high"


def test_only_the_best_full_budget_trial_of_each_method_is_judged():
    records = [_trial(0, "lorvp", 0.95, state="PRUNED", lr=0.25, rank=2),  # stopped early: not judged
               _trial(1, "lorvp", 0.90, lr=0.02, rank=2),
               _trial(2, "lorvp", 0.80, lr=0.25, rank=2)]
    (lr,) = [c for c in range_edges(STUDY, records) if c.knob == "lr"]
    assert lr.trial == 1 and lr.edge is None


def test_top_trials_at_the_same_edge_are_counted():
    low = STUDY.space["lr"].low
    records = [_trial(i, "lorvp", 0.9 - i / 100, lr=low, rank=2) for i in range(3)]
    records.append(_trial(9, "lorvp", 0.5, lr=0.1, rank=2))
    (lr,) = [c for c in range_edges(STUDY, records) if c.knob == "lr"]
    assert (lr.edge, lr.top_at_edge, lr.top) == ("low", 3, 3)
    assert "AT THE LOW EDGE (3 of its top 3 there)" in describe([lr])[0]


def test_an_int_knob_is_at_an_edge_only_on_its_end_and_a_log_knob_is_measured_in_logs():
    rank = STUDY.space["rank"]
    assert edge_of(rank, rank.low) == "low" and edge_of(rank, rank.high) == "high"
    assert edge_of(rank, rank.low + 1) is None
    lr = STUDY.space["lr"]
    # 4 % of the way up on a linear scale, but far from the low end in logs
    assert edge_of(lr, lr.low + 0.04 * (lr.high - lr.low)) is None
    assert edge_of(lr, lr.low * 1.01) == "low"
