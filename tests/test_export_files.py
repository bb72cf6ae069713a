"""A damaged export (truncated copy, broken download) fails in one line naming the file and the fix.

The export is real and small: one epoch of the quickstart prompt on 64 digits, written by
`lorsp.export.export_trial` from that run's checkpoint folder, with a random-init backbone so that
`backbone.safetensors` is part of it. No Ray study is needed for that.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lorsp
from lorsp.bundle import BACKBONE_FILE, META_FILE, PROMPT_FILE
from lorsp.config import ConfigError, load_study
from lorsp.export import export_trial
from lorsp.gallery import GALLERY_FILE
from lorsp.pareto import TrialRecord
from lorsp.train import train_loop
from tests.conftest import QUICKSTART

FAST = ["train.epochs=1", "data.max_train=64", "data.batch_size=32", "backbone.pretrained=false", "name=damaged"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    study = load_study(QUICKSTART, [*FAST, f"tracking.root={root / 'runs'}"]).resolved()
    train_loop(study, out_dir=root / "checkpoint", verbose=False)
    record = TrialRecord(number=3, params={}, values={"val_acc": 0.5}, state="COMPLETE",
                         checkpoint_path=str(root / "checkpoint"), pareto_rank=0)
    export_trial(study, record, root / "out")
    folder = root / "out" / "trial-3"
    assert {p.name for p in folder.iterdir()} == {META_FILE, PROMPT_FILE, BACKBONE_FILE, GALLERY_FILE}
    return folder


@pytest.fixture
def copy(exported: Path, tmp_path: Path) -> Path:
    """A fresh copy of the export for one test to damage."""
    return Path(shutil.copytree(exported, tmp_path / "out" / "trial-3"))


def _truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def test_the_intact_export_loads(copy: Path):
    model = lorsp.load(copy)
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 16, 16))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", [PROMPT_FILE, BACKBONE_FILE])
@pytest.mark.parametrize("damage", ["truncate", "header", "delete"])
def test_damaged_weights_name_the_file_and_say_to_re_export(copy: Path, name: str, damage: str):
    file = copy / name
    if damage == "truncate":
        _truncate(file)
    elif damage == "header":
        file.write_bytes(b"<html>502 Bad Gateway</html>" + file.read_bytes()[64:])
    else:
        file.unlink()
    with pytest.raises(ConfigError) as err:
        lorsp.load(copy)
    message = str(err.value)
    assert message.startswith(f"{file}: {'missing' if damage == 'delete' else 'truncated or corrupt'} (")
    assert message.endswith(f"re-export it with python -m lorsp.export --name damaged --pareto --out {copy.parent} "
                            "(or --best METRIC / --run-id ID, whichever chose trial 3)")
    assert "\n" not in message


def test_damaged_description_names_lorsp_json(copy: Path):
    meta = copy / META_FILE
    _truncate(meta, 0.3)
    with pytest.raises(ConfigError) as err:
        lorsp.load(copy)
    message = str(err.value)
    assert message.startswith(f"{meta}: truncated or corrupt (")
    assert "re-export it with python -m lorsp.export --name STUDY --pareto" in message and "\n" not in message


def test_incomplete_description_names_the_missing_entry_and_the_run(copy: Path):
    meta_file = copy / META_FILE
    meta = json.loads(meta_file.read_text())
    del meta["num_classes"]
    meta["mlflow_run_id"] = "0123abcd"  # an export taken from an MLflow run names that run in the fix
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        lorsp.load(copy)
    assert str(err.value) == (f"{meta_file}: not a complete lorsp export description (no 'num_classes' entry); "
                              f"re-export it with python -m lorsp.export --name damaged --run-id 0123abcd "
                              f"--out {copy.parent}")
