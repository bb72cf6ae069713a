"""A finished study's folder: a prompt gallery in every trial's run, beside every export and the
front's side by side.

One small real study (real local Ray, Optuna, MLflow; 3 trials x 2 epochs, ASHA stopping one after
its first epoch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from lorsp.config import load_study
from tests.conftest import QUICKSTART
from tests.test_tracking import OVERRIDES

pytestmark = pytest.mark.slow

NAME = "pics"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    import ray

    from lorsp.tracking import finish_study, tracking_uri, tune_callbacks
    from lorsp.tune import init_ray, run_study

    base = tmp_path_factory.mktemp("study-folder")
    root = base / "lorsp-runs"
    config = load_study(QUICKSTART, [*OVERRIDES, f"name={NAME}", f"tracking.root={root}"])
    init_ray(None)
    records = run_study(config, callbacks=tune_callbacks(config)).records
    assert finish_study(config, records) is not None
    yield {"base": base, "root": root, "config": config, "records": records, "uri": tracking_uri(config)}
    ray.shutdown()


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
    from lorsp.pareto.__main__ import main

    out = tmp_path / "pareto"
    assert main(["--name", NAME, "--root", str(study["root"]), "--out", str(out), "--gallery"]) == 0
    picture = out / "front_gallery.png"
    assert str(picture) in capsys.readouterr().out
    front = [r for r in study["records"] if r.pareto]
    one = mpimg.imread(str(next(Path(r.checkpoint_path) for r in front) / "gallery.png"))
    assert mpimg.imread(str(picture)).shape[1] >= len(front) * one.shape[1]
