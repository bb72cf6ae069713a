"""Export -> `lorsp.load` -> the same predictions as the trained model; MLflow registry round trip.

Uses the study that tests/test_tracking.py runs once per session (real Ray, Optuna, MLflow).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

import lorsp
from lorsp.config import ConfigError, StudyConfig
from lorsp.export import main
from tests.tracked_study import NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tracked_study: dict) -> dict:
    return tracked_study


def _children(run) -> dict[int, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=run["sqlite_uri"])
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`lorsp.role` = 'trial'")
    return {int(r.data.tags["optuna_trial"]): r for r in runs}


@pytest.fixture(scope="module")
def data(run):
    from lorsp.data import BatchIterator, load_splits_for

    d = run["study"].data
    splits = load_splits_for(d)
    images = next(iter(BatchIterator(splits.test, batch_size=48, image_size=d.image_size)))[0]
    return splits, images


def _trained_model(checkpoint: Path):
    """The trial's model rebuilt from its Ray checkpoint alone, the way lorsp.train built it."""
    from lorsp.model import build_model

    config = StudyConfig.model_validate(yaml.safe_load((checkpoint / "config.yaml").read_text()))
    torch.manual_seed(config.train.seed)  # train_loop seeds before building: same random backbone
    model = build_model(config, 10)
    model.load_trainable_state_dict(load_file(str(checkpoint / "prompt.safetensors")))
    return model.eval(), config


@torch.no_grad()
def _accuracy(model, split, image_size: int, batch_size: int) -> float:
    from lorsp.data import BatchIterator

    correct = seen = 0
    for x, y in BatchIterator(split, batch_size=batch_size, image_size=image_size):
        correct += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    return correct / seen


def test_export_pareto_then_load_predicts_like_the_trained_model(run, data, tmp_path, capsys):
    splits, images = data
    out = tmp_path / "exported"
    assert main(["--name", NAME, "--root", str(run["root"]), "--pareto", "--out", str(out)]) == 0
    assert "manifest" in capsys.readouterr().out
    records = {r.number: r for r in run["records"]}
    front = {n for n, r in records.items() if r.pareto}
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {row["trial"] for row in manifest} == front
    with (out / "manifest.csv").open() as handle:
        assert {int(row["trial"]) for row in csv.DictReader(handle)} == front
    children = _children(run)
    for row in manifest:
        folder = Path(row["path"])
        record = records[row["trial"]]
        meta = json.loads((folder / "lorsp.json").read_text())
        child = children[record.number]
        checkpoint = Path(child.data.tags["checkpoint_path"])
        trained, config = _trained_model(checkpoint)
        # The JSON describes the backbone, the method, the full config, metrics and the MLflow run.
        assert meta["backbone"]["name"] == config.backbone.model == "vit_micro_patch4_16.gratings"
        # Pretrained weights that lorsp.load rebuilds (here: the file shipped with lorsp) are not copied.
        assert meta["backbone"]["pretrained"] is True and meta["backbone"]["weights_file"] is None
        assert "vit_micro_patch4_16.gratings.safetensors" in meta["backbone"]["source"]
        assert meta["backbone"]["kwargs"] == config.backbone.kwargs
        assert meta["method"] == "lorsp" and meta["hyperparameters"] == config.model_dump(mode="json")
        assert meta["params"] == record.params and meta["metrics"]["val_acc"] == record.values["val_acc"]
        assert meta["mlflow_run_id"] == child.info.run_id and meta["weights_from"].startswith("mlflow run")
        assert (folder / "prompt.safetensors").read_bytes() == (checkpoint / "prompt.safetensors").read_bytes()
        # The independent rebuild really is the trained model: it reproduces the recorded val_acc.
        val_acc = _accuracy(trained, splits.val, config.data.image_size, 2 * config.data.batch_size)
        assert val_acc == pytest.approx(record.values["val_acc"], abs=1.01 / len(splits.val))
        model = lorsp.load(folder)
        assert isinstance(model, torch.nn.Module) and not model.training
        with torch.no_grad():
            torch.testing.assert_close(model(images), trained(images), rtol=0, atol=0)


def test_include_backbone_exports_weights_that_load_on_their_own(run, data, tmp_path, capsys):
    _, images = data
    out = tmp_path / "with-backbone"
    assert main(["--name", NAME, "--root", str(run["root"]), "--best", "val_acc", "--out", str(out),
                 "--include-backbone"]) == 0
    (row,) = pq.read_table(out / "manifest.parquet").to_pylist()
    folder = Path(row["path"])
    meta = json.loads((folder / "lorsp.json").read_text())
    assert meta["backbone"]["weights_file"] == "backbone.safetensors"
    saved = load_file(str(folder / "backbone.safetensors"))
    trained, _ = _trained_model(Path(_children(run)[row["trial"]].data.tags["checkpoint_path"]))
    assert saved.keys() == trained.backbone.state_dict().keys()
    model = lorsp.load(folder)
    with torch.no_grad():
        torch.testing.assert_close(model(images), trained(images), rtol=0, atol=0)
    capsys.readouterr()


def test_best_and_run_id_choose_the_right_trial(run, tmp_path, capsys):
    records = run["records"]
    eligible = [r for r in records if r.full_budget]
    best = sorted(eligible, key=lambda r: (-r.values["val_acc"], r.number))[0]
    out = tmp_path / "best"
    assert main(["--name", NAME, "--root", str(run["root"]), "--best", "val_acc", "--out", str(out)]) == 0
    (row,) = pq.read_table(out / "manifest.parquet").to_pylist()
    assert row["trial"] == best.number
    model = lorsp.load(out)  # an export folder holding one trial loads directly
    assert model.head.out_features == 10
    # --run-id: the trial ASHA stopped (any child run can be exported on purpose).
    stopped = next(r for r in records if not r.full_budget)
    child = _children(run)[stopped.number]
    out = tmp_path / "by-run"
    assert main(["--name", NAME, "--root", str(run["root"]), "--run-id", child.info.run_id, "--out", str(out)]) == 0
    (row,) = pq.read_table(out / "manifest.parquet").to_pylist()
    assert row["trial"] == stopped.number and row["mlflow_run_id"] == child.info.run_id
    capsys.readouterr()
    for bad in (["--run-id", "0123456789abcdef0123456789abcdef"], ["--best", "accuracy"], ["--best", "test_acc"]):
        assert main(["--name", NAME, "--root", str(run["root"]), *bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        if "test_acc" in bad:  # the test split never selects, not even "the best" prompt to export
            assert "use val_acc" in err
    assert main(["--name", "nope", "--root", str(run["root"]), "--pareto", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: no study named 'nope'")


def test_checkpoint_folder_fallback_when_mlflow_has_no_run(run, data, tmp_path):
    _, images = data
    empty = f"sqlite:///{(tmp_path / 'empty.db').resolve()}"
    out = tmp_path / "fallback"
    assert main(["--name", NAME, "--root", str(run["root"]), "--pareto", "--out", str(out),
                 "--tracking-uri", empty]) == 0
    children = _children(run)
    for row in pq.read_table(out / "manifest.parquet").to_pylist():
        meta = json.loads((Path(row["path"]) / "lorsp.json").read_text())
        assert meta["weights_from"].startswith("checkpoint ") and meta["mlflow_run_id"] is None
        trained, _ = _trained_model(Path(children[row["trial"]].data.tags["checkpoint_path"]))
        with torch.no_grad():
            torch.testing.assert_close(lorsp.load(row["path"])(images), trained(images), rtol=0, atol=0)


def test_register_then_load_from_the_model_registry(run, data, tmp_path):
    import mlflow

    _, images = data
    before = {n: (r.info.status, r.info.end_time) for n, r in _children(run).items()}
    out = tmp_path / "registered"
    assert main(["--name", NAME, "--root", str(run["root"]), "--best", "val_acc", "--out", str(out),
                 "--register", "lorsp-trk"]) == 0
    (row,) = pq.read_table(out / "manifest.parquet").to_pylist()
    assert row["registered_model"] == "lorsp-trk" and row["registered_version"] == "1"
    # Logging the model into the trial's run left that run's end state as it was.
    after = {n: (r.info.status, r.info.end_time) for n, r in _children(run).items()}
    assert after == before
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(run["sqlite_uri"])
    try:
        served = mlflow.pyfunc.load_model("models:/lorsp-trk/1")
        probabilities = served.predict(images.numpy().astype(np.float32))
    finally:
        mlflow.set_tracking_uri(previous)
    with torch.no_grad():
        expected = torch.softmax(lorsp.load(row["path"])(images), dim=1).numpy()
    assert probabilities.shape == (len(images), 10)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such export"):
        lorsp.load(tmp_path / "missing")
    (tmp_path / "two" / "trial-0").mkdir(parents=True)
    (tmp_path / "two" / "trial-1").mkdir(parents=True)
    for name in ("trial-0", "trial-1"):
        (tmp_path / "two" / name / "lorsp.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds 2 exported trials"):
        lorsp.load(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a lorsp export"):
        lorsp.load(tmp_path / "empty")
