"""A trial's checkpoint on disk: found in Ray's folder layout under the study's root, or copied
from remote storage (no Ray, no MLflow; torch only to read a checkpoint's epoch)."""

from __future__ import annotations

from pathlib import Path

from lorsp.config import StudyConfig
from lorsp.gallery import GALLERY_FILE
from lorsp.pareto import TrialRecord
from lorsp.relocate import under_root
from lorsp.search import default_root

CHECKPOINT_FILES = ("prompt.safetensors", "config.yaml")
"""What a checkpoint holds that the trial's MLflow run keeps (artifact `checkpoint/`)."""
_FETCHED_FILES = (*CHECKPOINT_FILES, GALLERY_FILE)


def fetch_checkpoint(location: str, dest: Path) -> Path | None:
    """A local folder holding a Ray checkpoint: the folder itself, or a copy from remote storage."""
    folder = Path(location)
    if folder.is_dir():
        return folder
    if "://" not in location:
        return None
    try:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(location)
        target = dest / "checkpoint"
        target.mkdir(parents=True, exist_ok=True)
        for name in _FETCHED_FILES:
            try:
                pafs.copy_files(f"{path}/{name}", str(target / name), source_filesystem=fs)
            except Exception:
                continue
        return target if any(target.iterdir()) else None
    except Exception:
        return None


def find_checkpoint(study: StudyConfig, record: TrialRecord) -> str | None:
    """The checkpoint folder of a trial's last reported epoch, found on disk.

    Uses the trial's stored `checkpoint_path` when the searcher recorded one (found under the
    study's current root when the folder was moved since: :func:`lorsp.relocate.under_root`), else looks where
    the two launchers write (`<root>/ray/<study>-<tune trial id>/` for a Ray Train run,
    `<root>/ray/<experiment>/<study>-<tune trial id>/` for an inline Tune trial) and takes the one
    whose epoch matches the epochs the trial reported (a stopped trial may have written one more
    before it was stopped).
    """
    stored = under_root(record.checkpoint_path, default_root(study))
    if stored and (Path(stored).is_dir() or "://" in str(stored)):
        return str(stored)
    tune_id = record.tune_trial_id
    if not tune_id:
        return None
    ray_root = default_root(study) / "ray"
    folder = f"{study.name}-{tune_id}"
    found = [*ray_root.glob(f"{folder}/checkpoint_*"), *ray_root.glob(f"*/{folder}/checkpoint_*")]
    candidates = sorted(p for p in found if (p / "prompt.safetensors").is_file())
    if not candidates:
        return None
    wanted = record.epochs_done
    if wanted:
        for candidate in reversed(candidates):
            if _checkpoint_epoch(candidate) == int(wanted):
                return str(candidate)
    return str(candidates[-1])


def _checkpoint_epoch(folder: Path) -> int | None:
    """Epochs completed when a checkpoint was written (its state.pt counts from 0)."""
    try:
        import torch

        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        return int(state["epoch"]) + 1
    except Exception:
        return None
