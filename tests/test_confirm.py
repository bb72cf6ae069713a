"""Seed confirmation: the interval maths on fixed numbers, the front on the means, and a real run
on the shared study (real Ray, Optuna storage and MLflow) that a second call does not repeat."""

from __future__ import annotations

import math

import optuna
import pytest

from lorsp.config import load_study
from lorsp.confirmations import (
    Confirmation,
    fresh_seeds,
    judge,
    mean_interval,
    store_result,
    stored_results,
)
from tests.conftest import QUICKSTART


def test_mean_interval_on_fixed_numbers():
    # mean 0.92, sd 0.02, n 3: half-width t(0.975, 2) * 0.02 / sqrt(3) = 4.302653 * 0.011547 = 0.049683
    mean, low, high = mean_interval([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92)
    assert (high - low) / 2 == pytest.approx(0.0496827, abs=1e-6)
    assert low == pytest.approx(0.8703172, abs=1e-6) and high == pytest.approx(0.9696828, abs=1e-6)
    assert mean_interval([1046.0] * 4) == (1046.0, 1046.0, 1046.0)  # a constant has no spread
    single = mean_interval([0.5])
    assert single[0] == 0.5 and single[1] == -math.inf and single[2] == math.inf
    # Five seeds: t(0.975, 4) = 2.776445
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    _, low, high = mean_interval(values)
    assert (high - low) / 2 == pytest.approx(2.776445 * math.sqrt(0.025) / math.sqrt(5), rel=1e-6)


def test_front_on_the_means_decides_confirmed():
    study = load_study(QUICKSTART)  # max val_acc, min prompt_density, min trainable_params

    def runs(*accs: float, density: float = 0.5, params: float = 1000.0) -> dict[int, dict[str, float]]:
        return {s: {"val_acc": a, "prompt_density": density, "trainable_params": params, "test_acc": a}
                for s, a in enumerate(accs, start=1)}

    confirmations = [
        # On the search's single run trial 0 looked best; over fresh seeds trial 1 beats it everywhere.
        Confirmation(0, {}, {"val_acc": 0.95}, runs(0.80, 0.82, 0.84)),
        Confirmation(1, {}, {"val_acc": 0.90}, runs(0.88, 0.90, 0.92)),
        Confirmation(2, {}, {"val_acc": 0.60}, runs(0.60, 0.61, 0.59, density=0.0, params=650.0)),
        Confirmation(3, {}, {"val_acc": 0.70}, {1: {"failed": 1.0, "error": "diverged"}}),
    ]
    judge(study, confirmations)
    assert [c.confirmed for c in confirmations] == [False, True, True, None]
    assert confirmations[1].intervals["val_acc"][0] == pytest.approx(0.90)
    assert confirmations[1].intervals["test_acc"][0] == pytest.approx(0.90)  # reported beside the objectives
    assert confirmations[3].ok_seeds == [] and not confirmations[3].intervals


def test_seeds_are_fresh_and_stable():
    study = load_study(QUICKSTART, ["train.seed=7"])
    assert fresh_seeds(study, 3) == [8, 9, 10]
    assert fresh_seeds(study, 5)[:3] == fresh_seeds(study, 3)  # asking for more extends the same list


def test_results_live_in_the_optuna_storage(tmp_path):
    found = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s",
                                directions=["maximize"])
    store_result(found, 3, 8, {"val_acc": 0.9, "test_acc": 0.8})
    store_result(found, 3, 9, {"failed": 1.0, "error": "boom"})
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert stored_results(again) == {(3, 8): {"val_acc": 0.9, "test_acc": 0.8},
                                     (3, 9): {"failed": 1.0, "error": "boom"}}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, local_ray):
    """A small finished study of its own (confirmation adds to a study's stores; the shared one
    of test_tracking must stay as its tests expect it)."""
    from lorsp.tracking import finish_study
    from lorsp.tracking.callback import tune_callbacks
    from lorsp.tune import run_study

    root = tmp_path_factory.mktemp("confirm") / "runs"
    study = load_study(QUICKSTART, ["name=conf", f"tracking.root={root}", "train.epochs=1", "data.max_train=160",
                                    "data.batch_size=40", "search.num_samples=3", "prompt.method=lorvp"])
    records = run_study(study, callbacks=tune_callbacks(study)).records
    finish_study(study, records)
    yield study, records, root


@pytest.mark.slow
def test_confirm_runs_each_seed_once_and_records_in_mlflow(finished_study, tmp_path, capsys):
    from mlflow import MlflowClient

    from lorsp.confirm import main
    from lorsp.tracking import tracking_uri

    study, records, root = finished_study
    front = sorted(r.number for r in records if r.pareto)
    assert main(["--name", "conf", "--root", str(root), "--seeds", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("confirm: trial ") == 2 * len(front)
    found = optuna.load_study(study_name="conf", storage=f"sqlite:///{root.resolve() / 'optuna.db'}")
    seeds = fresh_seeds(study, 2)
    assert set(stored_results(found)) == {(t, s) for t in front for s in seeds}
    for metrics in stored_results(found).values():
        assert 0.0 <= metrics["val_acc"] <= 1.0 and "test_acc" in metrics
    # A third seed: only the missing runs train.
    assert main(["--name", "conf", "--root", str(root), "--seeds", "3", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("confirm: trial ") == len(front)
    assert (tmp_path / "confirm.parquet").is_file() and (tmp_path / "confirm.png").stat().st_size > 1000
    client = MlflowClient(tracking_uri(study))
    experiment = client.get_experiment_by_name("conf")
    confirm_runs = client.search_runs([experiment.experiment_id], "tags.`lorsp.role` = 'confirm'")
    assert sorted(int(r.data.tags["lorsp.confirm_trial"]) for r in confirm_runs) == front
    for confirm_run in confirm_runs:
        assert confirm_run.data.tags["confirmed"] in ("true", "false") and "val_acc_mean" in confirm_run.data.metrics
        seeds_runs = client.search_runs([experiment.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{confirm_run.info.run_id}'")
        assert sorted(int(r.data.tags["lorsp.seed"]) for r in seeds_runs) == fresh_seeds(study, 3)
    # lorsp.pareto shows the confirmed columns.
    from lorsp.fronts import main as pareto_main

    assert pareto_main(["--name", "conf", "--root", str(root), "--out", str(tmp_path / "p"), "--no-plot"]) == 0
    assert "confirmed" in capsys.readouterr().out


def test_confirm_is_refused_while_a_driver_holds_the_study(tmp_path):
    """A front still being searched is not the one to confirm, and two confirmations would train the
    same seeds twice: confirm takes the study's lease and is refused, in one line, before any work."""
    from lorsp.config import ConfigError
    from lorsp.confirm import confirm
    from lorsp.lease import StudyLease
    from lorsp.search import engine_kwargs, prepare_study, rdb_storage, storage_uri

    study = load_study(QUICKSTART, [f"tracking.root={tmp_path / 'runs'}", "name=held"])
    uri = storage_uri(study)
    prepare_study(study, rdb_storage(uri), resume=False)
    with StudyLease(uri, "held", engine_kwargs(uri)), pytest.raises(ConfigError, match="is being run by") as err:
        confirm("held", seeds=2, root=str(tmp_path / "runs"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no full-budget trial"):  # the lease was given back
        confirm("held", seeds=2, root=str(tmp_path / "runs"))
