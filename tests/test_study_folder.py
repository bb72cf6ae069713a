"""A finished study's folder: a prompt gallery in every trial's run, beside every export and the
front's side by side; and the folder, moved elsewhere, still opens with its artifacts.

One small real study (real local Ray, Optuna, MLflow; 3 trials x 2 epochs, ASHA stopping one after
its first epoch), then the same folder after `shutil.move`, served by `python -m lorsp.ui`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from lorsp.config import load_study
from lorsp.ports import free_port
from tests.conftest import QUICKSTART, REPO
from tests.tracked_study import OVERRIDES

pytestmark = pytest.mark.slow

NAME = "pics"
PNG = b"\x89PNG\r\n\x1a\n"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a proxy must never see 127.0.0.1


@pytest.fixture(scope="module")
def study(tmp_path_factory, local_ray) -> dict[str, Any]:
    from lorsp.tracking import finish_study, tracking_uri
    from lorsp.tracking.callback import tune_callbacks
    from lorsp.tune import run_study

    base = tmp_path_factory.mktemp("study-folder")
    root = base / "lorsp-runs"
    config = load_study(QUICKSTART, [*OVERRIDES, f"name={NAME}", f"tracking.root={root}"])
    records = run_study(config, callbacks=tune_callbacks(config)).records
    assert finish_study(config, records) is not None
    yield {"base": base, "root": root, "config": config, "records": records, "uri": tracking_uri(config)}


def _trial_runs(uri: str) -> dict[int, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], "tags.`lorsp.role` = 'trial'")
    return {int(r.data.tags["optuna_trial"]): r for r in runs}


def test_every_trial_run_has_its_gallery(study):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=study["uri"])
    runs = _trial_runs(study["uri"])
    states = {r.number: r.state for r in study["records"]}
    assert sorted(runs) == sorted(states) and "PRUNED" in states.values()  # a stopped trial too
    for number, run in runs.items():
        listed = {a.path for a in client.list_artifacts(run.info.run_id, "prompts")}
        assert listed == {"prompts/gallery.png"}, (number, states[number], listed)


def test_export_writes_the_gallery_beside_each_prompt(study, tmp_path):
    import pyarrow.parquet as pq

    from lorsp.export import main

    out = tmp_path / "exported"
    assert main(["--name", NAME, "--root", str(study["root"]), "--pareto", "--out", str(out)]) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert rows
    for row in rows:
        folder = Path(row["path"])
        assert (folder / "gallery.png").read_bytes()[:8] == PNG and row["gallery"] == str(folder / "gallery.png")
        assert json.loads((folder / "lorsp.json").read_text())["files"]["gallery"] == "gallery.png"


def test_pareto_gallery_puts_the_front_side_by_side(study, tmp_path, capsys):
    from lorsp.fronts import main

    out = tmp_path / "pareto"
    assert main(["--name", NAME, "--root", str(study["root"]), "--out", str(out), "--gallery"]) == 0
    picture = out / "front_gallery.png"
    assert str(picture) in capsys.readouterr().out
    front = [r for r in study["records"] if r.pareto]
    one = mpimg.imread(str(next(Path(r.checkpoint_path) for r in front) / "gallery.png"))
    assert mpimg.imread(str(picture)).shape[1] >= len(front) * one.shape[1]


def _ui(root: Path, port: int, log: Path, timeout: float = 300.0) -> tuple[subprocess.Popen, list[str]]:
    """`python -m lorsp.ui --root ROOT` in its own session (output to a file, so that a full pipe never
    blocks the server), and what it printed up to the study's addresses."""
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "lorsp.ui", "--root", str(root), "--port", str(port)],
                                   cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        lines = log.read_text().splitlines()
        if any("Pareto front:" in line for line in lines):
            return process, lines
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"lorsp.ui printed no study addresses within {timeout:.0f} s: {log.read_text()[-3000:]}")


def _get(url: str, data: dict | None = None) -> bytes:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with _DIRECT.open(request, timeout=30) as response:
        assert response.status == 200
        return response.read()


def test_a_moved_study_folder_opens_with_its_artifacts(study):
    """Last in this module: it moves the study's folder away."""
    from mlflow import MlflowClient

    from lorsp.layout import find_checkpoint
    from lorsp.mlflow_views import SHARED_VIEW_TAG, TRIALS_VIEW
    from lorsp.relocate import relocate_store
    from lorsp.search import open_stored_study, trial_records

    assert relocate_store(study["uri"]) == []  # opened where it was written: never rewritten
    old, new = study["root"], study["base"] / "laptop" / "lorsp-runs"
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    assert not old.exists()

    port = free_port()
    process, printed = _ui(new, port, study["base"] / "ui.log")
    try:
        assert any(line.startswith("note: the study folder was moved or copied") for line in printed), printed
        trials_url = next(line.split()[-1] for line in printed if "trials:" in line)
        assert trials_url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "workflowType=machine_learning" \
            in trials_url and "viewStateShareKey=lorsp-trials" in trials_url
        base = f"http://127.0.0.1:{port}"
        runs = _trial_runs(f"sqlite:///{new / 'mlflow.db'}")
        for run in runs.values():
            png = _get(f"{base}/get-artifact?path=prompts/gallery.png&run_uuid={run.info.run_id}")
            assert png[:8] == PNG
            listed = json.loads(_get(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={run.info.run_id}"
                                     "&path=checkpoint"))
            assert {f["path"] for f in listed["files"]} == {"checkpoint/prompt.safetensors", "checkpoint/config.yaml"}
        # The view the printed address opens: its filter is one the server accepts, and it shows every trial.
        experiment_id = trials_url.split("/experiments/")[1].split("/")[0]
        tags = json.loads(_get(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"))
        view = json.loads({t["key"]: t["value"] for t in tags["experiment"]["tags"]}[f"{SHARED_VIEW_TAG}{TRIALS_VIEW}"])
        assert view["selectedColumns"][:3] == [f"metrics.`{o.metric}`" for o in study["config"].objectives]
        found = json.loads(_get(f"{base}/api/2.0/mlflow/runs/search",
                                {"experiment_ids": [experiment_id], "filter": view["searchFilter"]}))
        assert len(found["runs"]) == len(runs)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)

    client = MlflowClient(tracking_uri=f"sqlite:///{new / 'mlflow.db'}")
    run = next(iter(runs.values()))
    local = client.download_artifacts(run.info.run_id, "checkpoint/prompt.safetensors", str(new.parent))
    assert Path(local).read_bytes() == (Path(urllib.parse.urlparse(run.info.artifact_uri).path)
                                        / "checkpoint" / "prompt.safetensors").read_bytes()
    assert str(new) in run.info.artifact_uri
    # Checkpoint paths recorded in Optuna point into the old folder: the tools find them in the new one.
    config, storage, _ = open_stored_study(NAME, None, str(new))
    for record in trial_records(config, storage):
        assert record.checkpoint_path and record.checkpoint_path.startswith(str(old))
        found = find_checkpoint(config, record)
        assert found is not None and found.startswith(str(new)) and Path(found, "prompt.safetensors").is_file()
