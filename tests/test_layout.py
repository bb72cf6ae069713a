"""Where a trial's checkpoint is found (lorsp.layout): one order for every tool, no Ray, MLflow or Optuna."""

from __future__ import annotations

from pathlib import Path

import torch

from lorsp.config import load_study
from lorsp.layout import checkpoint_locations, find_checkpoint, ray_folder, trial_folder
from lorsp.pareto import TrialRecord
from tests.conftest import QUICKSTART


def _checkpoint(folder: Path, epoch: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "prompt.safetensors").write_bytes(b"")
    torch.save({"epoch": epoch - 1}, folder / "state.pt")  # state.pt counts epochs from 0
    return folder


def test_the_recorded_paths_come_first_then_the_epoch_the_trial_reported(tmp_path: Path) -> None:
    study = load_study(QUICKSTART, [f"tracking.root={tmp_path / 'runs'}", "name=lay"])
    inline = ray_folder(study) / "lay-20260101-000000" / trial_folder("lay", "t1")
    second, third = _checkpoint(inline / "checkpoint_000001", 2), _checkpoint(inline / "checkpoint_000002", 3)
    record = TrialRecord(number=0, params={}, values={}, state="PRUNED", epochs_done=2, tune_trial_id="t1")
    assert find_checkpoint(study, record) == str(second)  # not the one written after the trial was stopped
    assert list(checkpoint_locations(study, record)) == [str(second)]

    tagged, kept = _checkpoint(tmp_path / "tagged", 2), _checkpoint(tmp_path / "kept", 2)
    record.checkpoint_path = str(kept)
    assert list(checkpoint_locations(study, record, str(tagged))) == [str(tagged), str(kept), str(second)]
    assert find_checkpoint(study, record, str(tmp_path / "gone")) == str(kept)  # a path that is nowhere is skipped

    record.checkpoint_path, record.epochs_done = None, 0
    assert find_checkpoint(study, record) == str(third)  # no epoch reported: the last
    assert find_checkpoint(study, TrialRecord(number=1, params={}, values={}, state="FAIL")) is None
