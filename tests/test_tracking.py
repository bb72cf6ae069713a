"""MLflow recording of a real study: real local Ray, real Optuna storage, real MLflow stores.

One small study (3 trials x 2 epochs, ASHA stopping one of them) runs once per session and is
shared with tests/test_export.py. It is recorded twice at the same time: in the embedded sqlite
store and on a real `mlflow server` that the test kills after the first trial ends, so the
"server died midway" path is exercised by a real dead server; a second server on the same
backend database stands for that server coming back, to re-log into.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from lorsp.config import ConfigError
from lorsp.ports import free_port
from tests.conftest import brute_force_front, inclusion_exclusion_hv
from tests.tracked_study import NAME

pytestmark = pytest.mark.slow

EPOCH_METRICS = ("loss", "val_acc", "prompt_density", "firing_rate", "images_per_s")


@pytest.fixture(scope="module")
def run(tracked_study: dict[str, Any]) -> dict[str, Any]:
    return tracked_study


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, name: str = NAME) -> tuple[Any, list[Any]]:
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name} in {uri}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [(r.info.run_name, r.data.tags.get("lorsp.role")) for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children


def _expected_status(record) -> str:
    return {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[record.state]


def _brute_force_front(study, storage_url: str) -> tuple[set[int], dict[int, list[float]]]:
    """Pareto-optimal trial numbers straight from the Optuna storage, by the definition."""
    ot = optuna.load_study(study_name=study.name, storage=storage_url)
    modes = [o.mode for o in study.objectives]
    points = {t.number: list(t.values) for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE}
    numbers = sorted(points)
    front = {numbers[i] for i in brute_force_front([points[n] for n in numbers], modes)}
    assert front == {t.number for t in ot.best_trials}  # Optuna's own front agrees
    return front, points


# ---------------------------------------------------------------- the embedded sqlite store
def test_study_recorded_as_parent_and_children(run):
    from safetensors.torch import load_file

    records, root = run["records"], run["root"]
    assert run["sqlite_uri"] == f"sqlite:///{root.resolve() / 'mlflow.db'}" and run["sqlite_uri"].startswith("sqlite:////")
    client = _client(run["sqlite_uri"])
    experiment = client.get_experiment_by_name(NAME)
    assert experiment.artifact_location == (root.resolve() / "mlartifacts" / NAME).as_uri()
    parent, children = _runs(run["sqlite_uri"])
    assert len(records) == 3 and len(children) == 3
    assert parent.info.status == "FINISHED" and parent.data.tags["lorsp.role"] == "study"
    assert all(c.info.status != "RUNNING" for c in children)
    statuses = {c.info.status for c in children}
    assert statuses == {"FINISHED", "KILLED"}, statuses  # ASHA stops trial 2 (see OVERRIDES)
    by_number = {int(c.data.tags["optuna_trial"]): c for c in children}
    assert sorted(by_number) == sorted(r.number for r in records)
    for record in records:
        child = by_number[record.number]
        tags, metrics = child.data.tags, child.data.metrics
        assert child.info.status == _expected_status(record), (record, child.info.status)
        assert tags["tune_trial_id"] == record.tune_trial_id
        assert child.data.params == {k: str(v) for k, v in record.params.items()}  # only what the trial used
        assert "_lorsp_trial" not in child.data.params
        epochs = record.epochs_done
        for name in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, name))
            assert steps == list(range(1, epochs + 1)), (name, steps)
        assert metrics["val_acc"] == pytest.approx(record.values["val_acc"])
        assert metrics["trainable_params"] == record.values["trainable_params"]
        if record.full_budget:
            assert metrics["test_acc"] == pytest.approx(record.values["test_acc"]) and epochs == 2
        else:
            assert "test_acc" not in metrics and epochs == 1
        assert tags["hostname"] == socket.gethostname() and tags["gpu"] == "none"
        assert tags["node_ip"] and len(tags["node_id"]) > 20
        # The prompt+head artifact is the trial's last reported checkpoint, byte for byte.
        target = run["base"] / "dl" / str(record.number)
        target.mkdir(parents=True, exist_ok=True)
        local = client.download_artifacts(child.info.run_id, "checkpoint/prompt.safetensors", str(target))
        checkpoint = Path(tags["checkpoint_path"])
        # An inline trial's checkpoints: <root>/ray/<experiment>/<study>-<tune trial id>/checkpoint_*.
        assert checkpoint.parent.name == f"{NAME}-{record.tune_trial_id}"
        assert root.resolve() / "ray" in checkpoint.parents
        assert Path(local).read_bytes() == (checkpoint / "prompt.safetensors").read_bytes()
        assert "head.weight" in load_file(local)


def test_parent_run_holds_the_study(run):
    client = _client(run["sqlite_uri"])
    parent, _ = _runs(run["sqlite_uri"])
    params, tags = parent.data.params, parent.data.tags
    assert params["search.sampler"] == "random" and params["search.seed"] == "11" and params["name"] == NAME
    assert tags["sampler"] == "random" and tags["seed"] == "11"
    assert json.loads(params["space.rank"])["high"] == 8
    (run["base"] / "dl-parent").mkdir(exist_ok=True)
    study_yaml = client.download_artifacts(parent.info.run_id, "study.yaml", str(run["base"] / "dl-parent"))
    assert yaml.safe_load(Path(study_yaml).read_text()) == run["study"].model_dump()
    repo = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, cwd=repo).returncode == 0:
        commit = tags["git_commit"]
        assert commit == tags["mlflow.source.git.commit"] and len(commit) == 40
        # A commit of this repository (HEAD itself may have moved on since the study ran).
        assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo).returncode == 0
        assert tags["git_dirty"] in ("true", "false")
    import mlflow
    import ray

    assert tags["version.mlflow"] == mlflow.__version__ and tags["version.ray"] == ray.__version__
    assert "version.torch" in tags and "version.optuna" in tags


def test_pareto_tags_and_hypervolume_agree_with_brute_force(run):
    study = run["study"]
    front, points = _brute_force_front(study, f"sqlite:///{run['root'].resolve() / 'optuna.db'}")
    assert front and len(points) == 2
    parent, children = _runs(run["sqlite_uri"])
    tagged = {int(c.data.tags["optuna_trial"]) for c in children if c.data.tags["pareto"] == "true"}
    assert tagged == front
    for child in children:
        number = int(child.data.tags["optuna_trial"])
        if number in points:
            assert child.data.tags["pareto_rank"] == ("0" if number in front else child.data.tags["pareto_rank"])
            assert child.data.tags["pareto_rank"] != "none"
        else:  # stopped early: never eligible
            assert child.data.tags["pareto"] == "false" and child.data.tags["pareto_rank"] == "none"
    # Reference: val_acc 0, prompt_density 1, trainable_params 1.1 x the largest among eligible trials.
    ref = [0.0, 1.0, 1.1 * max(p[2] for p in points.values())]
    assert json.loads(parent.data.tags["hv_reference"]) == pytest.approx(
        {"val_acc": ref[0], "prompt_density": ref[1], "trainable_params": ref[2]})
    # Hypervolume of the front by inclusion-exclusion of its boxes (independent of lorsp.pareto).
    modes = [o.mode for o in study.objectives]
    hv = inclusion_exclusion_hv([points[n] for n in sorted(front)], modes, ref)
    assert parent.data.metrics["hypervolume"] == pytest.approx(hv)
    assert parent.data.metrics["pareto_front_size"] == len(front)
    # No statistic of the test set over the front: the test accuracy is reported per member only.
    assert not [name for name in parent.data.metrics if "test" in name]
    client = _client(run["sqlite_uri"])
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"pareto/front.png", "pareto/front.csv", "pareto/front.parquet", "pareto/trials.csv"} <= names
    import pyarrow.parquet as pq

    (run["base"] / "dl-front").mkdir(exist_ok=True)
    table = pq.read_table(client.download_artifacts(parent.info.run_id, "pareto/front.parquet",
                                                    str(run["base"] / "dl-front"))).to_pylist()
    assert {row["trial"] for row in table} == front and all(row["test_acc"] is not None for row in table)
    assert all(row["mlflow_run_id"] for row in table)


def test_resume_reuses_the_parent_and_adds_no_duplicates(run):
    from lorsp.tracking import finish_study
    from lorsp.tracking.callback import tune_callbacks

    study, records = run["study"], run["records"]
    parent, children = _runs(run["sqlite_uri"])
    (callback,) = tune_callbacks(study)
    assert callback.parent_id == parent.info.run_id
    callback.setup()  # what Tune calls when the resumed search starts
    client = _client(run["sqlite_uri"])
    reopened = client.get_run(parent.info.run_id)
    assert reopened.info.status == "RUNNING" and "resumed" in reopened.data.tags
    assert finish_study(study, records)["created"] == 0
    parent2, children2 = _runs(run["sqlite_uri"])
    assert parent2.info.run_id == parent.info.run_id and parent2.info.status == "FINISHED"
    assert sorted(c.info.run_id for c in children2) == sorted(c.info.run_id for c in children)


# ---------------------------------------------------------------- a tracking server that dies
def test_server_death_midway_does_not_stop_the_study(run):
    records = run["records"]
    assert run["killer"].killed_at is not None
    assert run["server_callback"].failure is not None  # it noticed, warned once, went on
    (warning,) = run["callback_warnings"]
    assert "relog --name trk" in warning and "\n" not in warning
    assert run["sqlite_callback"].failure is None
    assert sorted(r.state for r in records) == ["COMPLETE", "COMPLETE", "PRUNED"]
    # The results are in the Optuna storage whatever MLflow did.
    ot = optuna.load_study(study_name=NAME, storage=f"sqlite:///{run['root'].resolve() / 'optuna.db'}")
    assert len(ot.trials) == 3
    assert all(t.values is not None for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert all("metric:val_acc" in t.user_attrs for t in ot.trials)
    # finish_study against the dead server warns (one line, with the re-log command) and returns.
    assert run["server_finished"] is None and run["server_finish_s"] < 15
    (warning,) = run["server_finish_warnings"]
    assert "relog --name trk" in warning and "\n" not in warning


def test_dead_server_is_a_clear_error_within_seconds(run, capsys):
    from lorsp.tracking import main
    from lorsp.tracking.callback import tune_callbacks

    for uri in (run["server"].uri, f"http://127.0.0.1:{free_port()}"):
        study = run["study"].model_copy(update={"tracking": run["study"].tracking.model_copy(update={"uri": uri})})
        tick = time.perf_counter()
        with pytest.raises(ConfigError) as caught:
            tune_callbacks(study)
        assert time.perf_counter() - tick < 15
        message = str(caught.value)
        assert uri in message and "no MLflow server answers" in message and "\n" not in message
    tick = time.perf_counter()
    assert main(["relog", "--name", NAME, "--root", str(run["root"]), "--tracking-uri", run["server"].uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tracking.uri http://127.0.0.1:") and err.count("\n") == 1
    assert time.perf_counter() - tick < 15


def test_relog_into_the_restarted_server(run, capsys):
    from lorsp.tracking import main

    server = run["standby"].wait()  # the dead server's backend database, served again at a new address
    assert server.folder == run["server"].folder and server.uri != run["server"].uri
    assert main(["relog", "--name", NAME, "--root", str(run["root"]), "--tracking-uri", server.uri]) == 0
    printed = capsys.readouterr().out
    assert "re-logged study 'trk'" in printed
    parent, children = _runs(server.uri)
    # The parent created before the server died is reused, not duplicated.
    assert parent.info.run_id == run["server_callback"].parent_id and parent.info.status == "FINISHED"
    numbers = [int(c.data.tags["optuna_trial"]) for c in children]
    assert sorted(numbers) == [0, 1, 2]
    records = {r.number: r for r in run["records"]}
    relogged = [c for c in children if c.data.tags.get("relogged") == "true"]
    live = [c for c in children if "relogged" not in c.data.tags]
    assert relogged and live  # trials after the kill re-logged; the first one recorded live
    client = _client(server.uri)
    for child in children:
        record = records[int(child.data.tags["optuna_trial"])]
        assert child.info.status == _expected_status(record)
        assert child.data.metrics["val_acc"] == pytest.approx(record.values["val_acc"])
        assert child.data.tags["pareto"] == str(record.pareto).lower()
        artifacts = client.list_artifacts(child.info.run_id, "checkpoint")
        assert any(a.path == "checkpoint/prompt.safetensors" for a in artifacts)
    first = min(live, key=lambda c: c.info.start_time)
    assert len(client.get_metric_history(first.info.run_id, "val_acc")) >= 1
    # Again: nothing new.
    assert main(["relog", "--name", NAME, "--root", str(run["root"]), "--tracking-uri", server.uri]) == 0
    assert "0 child runs created" in capsys.readouterr().out
    assert len(_runs(server.uri)[1]) == 3


def test_relog_into_a_fresh_store(run, capsys):
    from lorsp.tracking import main

    uri = f"sqlite:///{(run['base'] / 'fresh' / 'mlflow.db').resolve()}"
    (run["base"] / "fresh").mkdir(exist_ok=True)
    assert main(["relog", "--name", NAME, "--root", str(run["root"]), "--tracking-uri", uri]) == 0
    assert "3 child runs created" in capsys.readouterr().out
    parent, children = _runs(uri)
    sqlite_parent, _ = _runs(run["sqlite_uri"])
    assert parent.data.metrics["hypervolume"] == pytest.approx(sqlite_parent.data.metrics["hypervolume"])
    client = _client(uri)
    for child in children:
        assert child.info.status != "RUNNING" and child.data.tags["relogged"] == "true"
        names = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
        assert "checkpoint/prompt.safetensors" in names  # found in the Ray checkpoint folders


def test_cli_errors_are_one_line(run, capsys, tmp_path):
    from lorsp.tracking import main as relog_main
    from lorsp.ui import main as ui_main

    assert relog_main(["relog", "--name", "nope", "--root", str(run["root"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no study named 'nope'") and err.count("\n") == 1
    assert ui_main(["--root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no MLflow store") and err.count("\n") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert ui_main(["--root", str(run["root"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "already in use" in err and err.count("\n") == 1
