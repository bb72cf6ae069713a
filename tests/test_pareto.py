"""Pareto selection: non-dominated sorting, hypervolume, reference point, and `python -m lorsp.pareto`.

No Ray here: the CLI test builds a real Optuna RDB storage the way `lorsp.tune` leaves it.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import optuna
import pyarrow.parquet as pq
import pytest

from lorsp.config import load_study
from lorsp.fronts import main
from lorsp.metrics import is_bounded
from lorsp.pareto import TrialRecord, hypervolume, non_dominated_ranks, rank_trials, reference_point, summarise
from tests.conftest import QUICKSTART, REPO, brute_force_front, inclusion_exclusion_hv


# ---------------------------------------------------------------- hypervolume
def test_hypervolume_2d_by_hand():
    # maximise accuracy, minimise density; reference (0, 1). Staircase by hand:
    # 0.9 x (1 - 0.5) + 0.7 x (0.5 - 0.2) + 0.5 x (0.2 - 0.1) = 0.45 + 0.21 + 0.05 = 0.71
    front = [[0.9, 0.5], [0.7, 0.2], [0.5, 0.1]]
    assert hypervolume(np.array(front), ["max", "min"], [0.0, 1.0]) == pytest.approx(0.71)
    # A dominated point and a point beyond the reference add nothing.
    more = front + [[0.6, 0.6], [0.95, 1.2]]
    assert hypervolume(np.array(more), ["max", "min"], [0.0, 1.0]) == pytest.approx(0.71)


def test_hypervolume_3d_by_hand():
    # Three boxes in the unit cube (all minimised, reference (1,1,1)): each 0.25, every pairwise and
    # the triple intersection is the 0.5-cube (0.125): 3 x 0.25 - 3 x 0.125 + 0.125 = 0.5.
    pts = [[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
    assert hypervolume(np.array(pts), ["min"] * 3, [1, 1, 1]) == pytest.approx(0.5)
    # The same front with the first objective maximised (mirrored: x -> 1 - x, reference 0).
    mirrored = [[1 - p[0], p[1], p[2]] for p in pts]
    assert hypervolume(np.array(mirrored), ["max", "min", "min"], [0, 1, 1]) == pytest.approx(0.5)
    # A study-shaped front: (val_acc max, density min, params min) with reference (0, 1, 1100):
    study_front = [[0.9, 0.3, 1000.0], [0.8, 0.1, 800.0]]
    # box A = 0.9 * 0.7 * 100 = 63, box B = 0.8 * 0.9 * 300 = 216, A∩B = 0.8 * 0.7 * 100 = 56
    assert hypervolume(np.array(study_front), ["max", "min", "min"], [0, 1, 1100]) == pytest.approx(63 + 216 - 56)


def test_hypervolume_matches_inclusion_exclusion_on_random_fronts():
    rng = np.random.default_rng(0)
    for dims in (2, 3, 4):
        for _ in range(5):
            pts = rng.random((7, dims))
            modes = ["max" if d % 2 == 0 else "min" for d in range(dims)]
            ref = [0.0 if m == "max" else 1.0 for m in modes]
            front = sorted(brute_force_front(pts.tolist(), modes))
            expected = inclusion_exclusion_hv(pts[front].tolist(), modes, ref)
            assert hypervolume(pts, modes, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- sorting
def test_non_dominated_ranks_agree_with_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        # Coarse values make ties and duplicates common: equal points do not dominate each other.
        pts = rng.integers(0, 4, size=(12, 3)).astype(float)
        modes = ["max", "min", "min"]
        ranks = non_dominated_ranks(pts, modes)
        assert {i for i, r in enumerate(ranks) if r == 0} == brute_force_front(pts.tolist(), modes)
        # Rank k+1 is the front of what remains after removing ranks <= k.
        remaining = list(range(len(pts)))
        for k in range(int(ranks.max()) + 1):
            layer = brute_force_front(pts[remaining].tolist(), modes)
            assert {remaining[i] for i in layer} == {i for i, r in enumerate(ranks) if r == k}
            remaining = [i for i in remaining if ranks[i] != k]


def test_rank_trials_only_full_budget_complete():
    objectives = [("val_acc", "max"), ("prompt_density", "min")]
    trials = [
        TrialRecord(0, {}, {"val_acc": 0.5, "prompt_density": 0.5}, "COMPLETE"),
        TrialRecord(1, {}, {"val_acc": 0.9, "prompt_density": 0.1}, "PRUNED"),  # stopped early
        TrialRecord(2, {}, {"val_acc": 0.4, "prompt_density": 0.6}, "COMPLETE"),
        TrialRecord(3, {}, {"val_acc": 0.99, "prompt_density": 0.0}, "FAIL"),
        TrialRecord(4, {}, {"val_acc": 0.99, "prompt_density": 0.0}, "WAITING"),  # interrupted
    ]
    rank_trials(trials, objectives)
    assert [t.pareto_rank for t in trials] == [0, None, 1, None, None]


def test_reference_point_rule():
    objectives = [("val_acc", "max"), ("prompt_density", "min"), ("trainable_params", "min")]
    values = np.array([[0.9, 0.2, 1000.0], [0.5, 0.0, 3000.0]])
    assert reference_point(objectives, values, is_bounded).tolist() == pytest.approx([0.0, 1.0, 3300.0])
    # What is bounded is the caller's to say (the maths knows no metric): unbounded, density's
    # reference is 1.1 x its largest value and accuracy's the 0 of an unbounded maximised metric.
    assert reference_point(objectives, values, lambda m: False).tolist() == pytest.approx([0.0, 0.22, 3300.0])
    records = [TrialRecord(i, {}, dict(zip([m for m, _ in objectives], v)), "COMPLETE")
               for i, v in enumerate(values.tolist())]
    summary = summarise(rank_trials(records, objectives), objectives, is_bounded)
    assert [r.number for r in summary.front] == [0, 1]
    expected = inclusion_exclusion_hv(values.tolist(), ["max", "min", "min"], [0.0, 1.0, 3300.0])
    assert summary.hypervolume == pytest.approx(expected)
    # Normalised by the ideal (1, 0, 0) to reference box: 1 x 1 x 3300.
    assert summary.hypervolume_normalised == pytest.approx(expected / 3300.0)


# ---------------------------------------------------------------- the CLI on a real Optuna storage
@pytest.fixture
def stored_study(tmp_path):
    from lorsp.search import prepare_study, rdb_storage, storage_uri

    study = load_study(QUICKSTART, [f"tracking.root={tmp_path / 'runs'}", "name=cli"])
    storage = rdb_storage(storage_uri(study))
    prepare_study(study, storage, resume=False)
    ot = optuna.load_study(study_name="cli", storage=storage)
    rows = [  # (val_acc, density, params, full_budget, test_acc)
        (0.8, 0.2, 1000.0, True, 0.75),
        (0.6, 0.1, 1000.0, True, 0.55),
        (0.5, 0.3, 1200.0, True, 0.50),   # dominated by trial 0
        (0.95, 0.0, 500.0, False, 0.9),   # stopped early: must not enter the front
    ]
    dist = {"rank": optuna.distributions.IntDistribution(1, 8, log=True)}
    for i, (acc, dens, params, full, test) in enumerate(rows):
        ot.add_trial(optuna.trial.create_trial(
            params={"rank": i + 1}, distributions=dist, values=[acc, dens, params] if full else None,
            state=optuna.trial.TrialState.COMPLETE if full else optuna.trial.TrialState.PRUNED,
            user_attrs={"epochs_done": 2 if full else 1, "tune_trial_id": f"t{i}",
                        "metric:test_acc": test, "metric:val_acc": acc, "metric:prompt_density": dens,
                        "metric:trainable_params": params},
        ))
    return study, rows


def test_pareto_cli_prints_and_writes_front(stored_study, tmp_path, capsys):
    study, rows = stored_study
    out = tmp_path / "out"
    assert main(["--name", "cli", "--root", str(tmp_path / "runs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pareto-optimal trials" in printed and "hypervolume" in printed
    expected = sorted(brute_force_front([list(r[:3]) for r in rows[:3]], ["max", "min", "min"]))
    assert expected == [0, 1]
    front = pq.read_table(out / "front.parquet").to_pylist()
    assert sorted(r["trial"] for r in front) == expected
    assert {r["trial"]: r["test_acc"] for r in front} == {0: 0.75, 1: 0.55}
    with (out / "front.csv").open() as handle:
        assert sorted(int(r["trial"]) for r in csv.DictReader(handle)) == expected
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == 4 and [r["pareto_rank"] for r in sorted(trials, key=lambda r: r["trial"])] == [0, 0, 1, None]
    # The front is Optuna's own: COMPLETE trials only, so best_trials needs no filtering.
    best = optuna.load_study(study_name="cli", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}").best_trials
    assert sorted(t.number for t in best) == expected
    assert (out / "front.png").stat().st_size > 1000
    # Hypervolume in the printout is the front's, with the documented reference (0, 1, 1.1 x 1200).
    hv = inclusion_exclusion_hv([list(rows[i][:3]) for i in expected], ["max", "min", "min"], [0, 1, 1320])
    assert f"{hv:.6g}" in printed


def test_python_m_lorsp_pareto_runs_the_command(stored_study, tmp_path):
    """The entry point the README uses: `lorsp/pareto/__main__.py` hands over to lorsp.fronts."""
    proc = subprocess.run([sys.executable, "-m", "lorsp.pareto", "--name", "cli", "--root", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "out"), "--no-plot"], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Pareto-optimal trials" in proc.stdout
    assert sorted(r["trial"] for r in pq.read_table(tmp_path / "out" / "front.parquet").to_pylist()) == [0, 1]


def test_pareto_cli_errors_are_one_line(stored_study, tmp_path, capsys):
    assert main(["--name", "nope", "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope" in err
    assert main(["--name", "cli", "--root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Optuna database") and err.count("\n") == 1


def test_group_fronts_are_each_methods_own_front():
    from lorsp.pareto import group_fronts

    objectives = [("val_acc", "max"), ("prompt_density", "min")]
    rows = [("lorsp", "pixel", 0.9, 0.8), ("lorsp", "pixel", 0.8, 0.9), ("lorsp", "factor", 0.85, 0.1),
            ("lorvp", None, 0.95, 1.0), ("lorvp", None, 0.90, 1.0), ("none", None, 0.5, 0.0)]
    records = [TrialRecord(i, {"method": m, **({"lorsp_mode": mode} if mode else {})},
                           {"val_acc": a, "prompt_density": d}, "COMPLETE") for i, (m, mode, a, d) in enumerate(rows)]
    records.append(TrialRecord(9, {"method": "lorvp"}, {"val_acc": 0.99, "prompt_density": 0.0}, "PRUNED"))
    fronts = group_fronts(records, objectives, ["method"])
    assert {k: [r.number for r in v] for k, v in fronts.items()} == {"lorsp": [0, 2], "lorvp": [3], "none": [5]}
    # With LoRSP's readings apart, pixel trial 0 no longer competes with factor trial 2.
    by_mode = group_fronts(records, objectives, ["method", "lorsp_mode"])
    assert {k: [r.number for r in v] for k, v in by_mode.items()} == {
        "lorsp pixel": [0], "lorsp factor": [2], "lorvp": [3], "none": [5]}


def test_pareto_cli_by_method_draws_one_front_per_method(tmp_path, capsys):
    from lorsp.search import prepare_study, rdb_storage, storage_uri

    study = load_study(QUICKSTART, [f"tracking.root={tmp_path / 'runs'}", "name=bym"])
    storage = rdb_storage(storage_uri(study))
    prepare_study(study, storage, resume=False)
    ot = optuna.load_study(study_name="bym", storage=storage)
    dist = {"method": optuna.distributions.CategoricalDistribution(["lorsp", "lorvp", "none"])}
    for method, values in [("lorsp", [0.9, 0.8, 1000.0]), ("lorsp", [0.7, 0.2, 1000.0]),
                           ("lorvp", [0.95, 1.0, 900.0]), ("none", [0.5, 0.0, 650.0])]:
        ot.add_trial(optuna.trial.create_trial(params={"method": method}, distributions=dist, values=values))
    out = tmp_path / "out"
    assert main(["--name", "bym", "--root", str(tmp_path / "runs"), "--out", str(out), "--by", "method"]) == 0
    printed = capsys.readouterr().out
    assert "method = lorsp: its own Pareto front" in printed and "method = none" in printed
    assert (out / "front_by_method.png").stat().st_size > 1000


def test_pareto_cli_edges_names_a_best_pinned_at_its_range(stored_study, tmp_path, capsys):
    # The best full-budget trial (0, val_acc 0.8) has rank 1, the bottom of the quickstart's 1-8;
    # the stopped trial 3 (0.95) is not judged.
    assert main(["--name", "cli", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                 "--no-plot", "--edges"]) == 0
    printed = capsys.readouterr().out
    assert "lorsp trial   0  rank = 1 in [1, 8]: AT THE LOW EDGE (1 of its top 3 there)" in printed
