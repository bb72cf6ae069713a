"""The study folder: where a study's stores, Ray experiments and checkpoints are, and where a trial's
checkpoint is found (no Ray, MLflow or Optuna here; torch only to read a checkpoint's epoch).

Under the study's root (``tracking.root``, :func:`default_root`)::

    optuna.db                                          the Optuna storage, unless tracking.storage names one
    mlflow.db                                          the MLflow store, unless tracking.uri names one
    mlartifacts/<study>/                               its artifacts (lorsp.tracking.store.artifact_location)
    ray/<study>-<tune trial id>/checkpoint_*/          a Ray Train trial's checkpoints
    ray/<experiment>/<study>-<tune trial id>/checkpoint_*/   an inline Tune trial's

A checkpoint folder holds ``prompt.safetensors``, ``config.yaml``, ``state.pt`` and, after the last
epoch, ``gallery.png``. The keys a trial is recorded under (its Tune trial id, its checkpoint path:
one name each for the Optuna attribute, the Tune result and the MLflow tag) are
:data:`lorsp.keys.TUNE_TRIAL_ID` and :data:`lorsp.keys.CHECKPOINT`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lorsp.gallery import GALLERY_FILE
from lorsp.relocate import under_root

if TYPE_CHECKING:
    from lorsp.config import StudyConfig
    from lorsp.pareto import TrialRecord

OPTUNA_DB = "optuna.db"
MLFLOW_DB = "mlflow.db"
CHECKPOINT_FILES = ("prompt.safetensors", "config.yaml")
"""What a checkpoint holds that the trial's MLflow run keeps (artifact `checkpoint/`)."""
_FETCHED_FILES = (*CHECKPOINT_FILES, GALLERY_FILE)


# ---------------------------------------------------------------- the folder and its stores
def default_root(study: StudyConfig) -> Path:
    return Path(study.tracking.root).expanduser().resolve()


def embedded_uri(study: StudyConfig, explicit: str | None, filename: str) -> str:
    """`explicit` when given, else an absolute sqlite file under the study's root (a trial's
    working directory is not the caller's, so a relative path would point elsewhere)."""
    if explicit:
        return explicit
    root = default_root(study)
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / filename}"


def storage_uri(study: StudyConfig, override: str | None = None) -> str:
    """`--storage`, else `tracking.storage`, else sqlite beside the MLflow store."""
    return embedded_uri(study, override or study.tracking.storage, OPTUNA_DB)


def ray_folder(study: StudyConfig) -> Path:
    """Where the study's Tune experiments (and its Ray Train runs) write: their `storage_path`."""
    return default_root(study) / "ray"


def trial_folder(study_name: str, tune_trial_id: str) -> str:
    """The name of a trial's folder: an inline trial's in its experiment's, a Ray Train run's in :func:`ray_folder`."""
    return f"{study_name}-{tune_trial_id}"


# ---------------------------------------------------------------- a trial's checkpoint
def checkpoint_locations(study: StudyConfig, record: TrialRecord, tagged: str | None = None) -> Iterator[str]:
    """Where a trial's checkpoint of its last reported epoch may be, best first.

    `tagged` (the checkpoint path on the trial's MLflow run) and the one its Optuna record keeps,
    each where it is now (under the study's current root when the folder was moved since:
    :func:`lorsp.relocate.under_root`) and only when it is there or remote; then the folder that the
    launchers wrote (see the module's layout) whose epoch matches the epochs the trial reported (a
    stopped trial may have written one more before it was stopped), else its last.
    """
    for recorded in (tagged, record.checkpoint_path):
        stored = under_root(recorded, default_root(study))
        if stored and (Path(stored).is_dir() or "://" in str(stored)):
            yield str(stored)
    tune_id = record.tune_trial_id
    if not tune_id:
        return
    ray_root = ray_folder(study)
    folder = trial_folder(study.name, tune_id)
    found = [*ray_root.glob(f"{folder}/checkpoint_*"), *ray_root.glob(f"*/{folder}/checkpoint_*")]
    candidates = sorted(p for p in found if (p / CHECKPOINT_FILES[0]).is_file())
    if not candidates:
        return
    wanted = record.epochs_done
    if wanted:
        for candidate in reversed(candidates):
            if _checkpoint_epoch(candidate) == int(wanted):
                yield str(candidate)
                return
    yield str(candidates[-1])


def find_checkpoint(study: StudyConfig, record: TrialRecord, tagged: str | None = None) -> str | None:
    """The first of :func:`checkpoint_locations`, or None."""
    return next(checkpoint_locations(study, record, tagged), None)


def local_checkpoint(study: StudyConfig, record: TrialRecord, tagged: str | None,
                     dest: Path) -> tuple[str, Path] | None:
    """(location, local folder) of the first of :func:`checkpoint_locations` that holds the prompt
    weights, copied under `dest` when remote; None when no checkpoint of the trial is left."""
    for location in checkpoint_locations(study, record, tagged):
        folder = fetch_checkpoint(location, dest / "ckpt")
        if folder is not None and (folder / CHECKPOINT_FILES[0]).is_file():
            return location, folder
    return None


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


def _checkpoint_epoch(folder: Path) -> int | None:
    """Epochs completed when a checkpoint was written (its state.pt counts from 0)."""
    try:
        import torch

        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        return int(state["epoch"]) + 1
    except Exception:
        return None
