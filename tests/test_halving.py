"""Pareto-aware successive halving (lorsp.pareto.halving, lorsp.schedulers.ParetoASHA): the rule that
decides which trials of a rung go on, held on hand-built rungs beside Ray's own ASHA."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lorsp.pareto.halving import crowding_distance, promotion_order, survives

OBJECTIVES = [("val_acc", "max"), ("prompt_density", "min"), ("trainable_params", "min")]
MODES = [m for _, m in OBJECTIVES]
BOUNDS = [(0.0, 1.0), (0.0, 1.0), None]

# A rung reached by three dense, accurate trials, then by a sparse one that gave up accuracy.
DENSE = [[0.90, 1.00, 1046.0], [0.88, 0.95, 1046.0], [0.85, 0.90, 1046.0]]
SPARSE = [0.60, 0.05, 1046.0]


def _asha_decisions(rows: list[list[float]]) -> list[str]:
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=8, grace_period=2, reduction_factor=2)
    out = []
    for i, row in enumerate(rows):
        trial = SimpleNamespace(trial_id=f"t{i}")
        asha.on_trial_add(None, trial)
        out.append(asha.on_trial_result(None, trial, {"epoch": 2, **dict(zip([n for n, _ in OBJECTIVES], row))}))
    return out


def _pareto_decisions(rows: list[list[float]], scale: float = 1.0) -> list[str]:
    from lorsp.schedulers import ParetoASHA

    scheduler = ParetoASHA(OBJECTIVES, milestones=[2, 4], reduction_factor=2)
    return [scheduler.decide(f"t{i}", 2, [a, d, p * scale]) for i, (a, d, p) in enumerate(rows)]


def test_asha_on_val_acc_stops_the_sparse_trial_and_the_pareto_rule_keeps_it():
    rows = [*DENSE, SPARSE]
    assert _asha_decisions(rows)[-1] == "STOP"
    assert _pareto_decisions(rows)[-1] == "CONTINUE"


def test_a_dominated_newcomer_is_stopped():
    rows = [*DENSE, [0.70, 1.00, 1046.0]]  # worse than the first trial in every objective
    assert _pareto_decisions(rows)[-1] == "STOP"


def test_the_decision_does_not_change_when_the_parameter_count_is_multiplied_by_1000():
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows = [[rng.uniform(0.3, 1.0), rng.uniform(0.0, 1.0), float(rng.integers(500, 5000))] for _ in range(7)]
        assert _pareto_decisions(rows) == _pareto_decisions(rows, scale=1000.0)


def test_the_ends_of_a_front_go_on_before_its_middle():
    # One front of five (accuracy rises with density): keep ⌈5/2⌉ = 3, the two ends first.
    rows = np.array([[0.5, 0.1, 1.0], [0.6, 0.3, 1.0], [0.7, 0.5, 1.0], [0.8, 0.7, 1.0], [0.9, 0.9, 1.0]])
    order = promotion_order(rows, MODES, BOUNDS)
    assert set(order[:2]) == {0, 4}
    assert survives(rows, 0, MODES, BOUNDS, 2) and survives(rows, 4, MODES, BOUNDS, 2)


def test_front_rank_comes_before_spread():
    rows = np.array([[0.9, 0.5, 1.0], [0.5, 0.9, 1.0], [0.91, 0.4, 1.0]])  # row 2 dominates both others
    assert promotion_order(rows, MODES, BOUNDS)[0] == 2


def test_a_trial_with_a_missing_objective_ranks_last():
    rows = np.array([[0.5, 0.5, 1.0], [np.nan, 0.1, 1.0], [0.4, 0.6, 1.0]])
    assert promotion_order(rows, MODES, BOUNDS)[-1] == 1


def test_crowding_gives_the_extremes_infinity_and_ignores_flat_objectives():
    points = np.array([[0.0, 1.0, 0.5], [0.5, 0.5, 0.5], [1.0, 0.0, 0.5]])
    distance = crowding_distance(points)
    assert np.isinf(distance[0]) and np.isinf(distance[2]) and distance[1] == pytest.approx(2.0)


def test_a_trial_is_judged_once_per_rung_and_at_the_highest_rung_it_reached():
    from lorsp.schedulers import ParetoASHA

    scheduler = ParetoASHA(OBJECTIVES, milestones=[2, 4], reduction_factor=2)
    assert scheduler.decide("a", 1, DENSE[0]) == "CONTINUE"  # before the first rung: nothing recorded
    assert scheduler.decide("a", 2, DENSE[0]) == "CONTINUE"  # the first to arrive goes on
    assert scheduler.decide("b", 2, [0.5, 1.0, 2000.0]) == "STOP"
    assert scheduler.decide("b", 3, [0.5, 1.0, 2000.0]) == "CONTINUE"  # a retried trial is not judged again
    assert [sorted(r) for _, r in scheduler.rungs] == [[], ["a", "b"]]


def test_pareto_asha_stops_at_the_epochs_the_trials_save_their_gallery_for():
    from lorsp.config import load_study
    from lorsp.schedulers import ParetoASHA
    from tests.conftest import QUICKSTART

    study = load_study(QUICKSTART, ["search.scheduler.type=pareto_asha", "search.scheduler.grace_period=2",
                                    "train.epochs=10"])
    scheduler = ParetoASHA.for_study(study)
    assert sorted(m for m, _ in scheduler.rungs) == [m for m in study.search.scheduler.stop_epochs(10) if m < 10]
    assert [m for m, _ in scheduler.rungs] and all(m < 10 for m, _ in scheduler.rungs)


def test_among_a_fronts_extremes_the_one_best_on_more_objectives_goes_on_first():
    # A first rung as the quickstart's benchmark met it: three of four trials are extremes (infinite
    # crowding). The probe arrives last and is the best on two objectives (density 0, the fewest
    # parameters); by arrival alone the pad prompt (the best on none) went on and the probe stopped.
    rows = np.array([[0.60, 1.00, 842.0],    # LoR-VP: the most accurate
                     [0.44, 0.23, 1046.0],   # LoRSP: inside the front
                     [0.52, 0.75, 1226.0],   # pad: the largest
                     [0.22, 0.00, 650.0]])   # the linear probe
    assert int(np.isinf(crowding_distance(rows)).sum()) == 3
    assert promotion_order(rows, MODES, BOUNDS) == [3, 0, 2, 1]
    assert survives(rows, 3, MODES, BOUNDS, 2) and not survives(rows, 2, MODES, BOUNDS, 2)
