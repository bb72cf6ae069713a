"""A trial's files read back: from its MLflow run's artifacts, else from its checkpoint folder.

What the export and the Pareto tool's gallery need of a recorded trial: its prompt weights and the
config it trained with (artifact `checkpoint/`), and its prompt gallery (artifact
`prompts/gallery.png`). When the run, its artifact or the whole store is missing, the same files
are taken from the trial's Ray checkpoint, found by :func:`lorsp.layout.local_checkpoint` (the one
place that resolves where a trial's checkpoint is). No Ray.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorsp.config import ConfigError, StudyConfig
from lorsp.gallery import GALLERY_FILE
from lorsp.keys import CHECKPOINT
from lorsp.layout import CHECKPOINT_FILES, local_checkpoint
from lorsp.tracking.store import CHECKPOINT_ARTIFACTS, PROMPT_ARTIFACTS, connect

if TYPE_CHECKING:
    from lorsp.pareto import TrialRecord

PROMPT_FILE, CONFIG_FILE = CHECKPOINT_FILES


def open_tracking(study: StudyConfig, tracking: str | None, required: bool) -> tuple[Any, dict[int, Any], str | None]:
    """(store, child runs by trial number, parent run id) of the study's MLflow experiment; when the store
    cannot be reached, a warning and (None, {}, None), so the tools fall back to the checkpoint folders,
    unless `required`."""
    try:
        store = connect(study, tracking)
        parent = store.find_parent()
        return store, store.child_runs(), parent.info.run_id if parent else None
    except ConfigError as err:
        if required:
            raise
        print(f"warning: {err}; taking the weights from the checkpoint folders", file=sys.stderr)
        return None, {}, None


def fetch_weights(study: StudyConfig, record: TrialRecord, run: Any | None, store: Any | None,
                  tmp: Path) -> tuple[str, Path, str | None]:
    """(where from, prompt.safetensors path, config.yaml text or None): MLflow artifact, else checkpoint folder."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if run is not None and store is not None:
        try:
            local = Path(store.client.download_artifacts(run.info.run_id, CHECKPOINT_ARTIFACTS, str(tmp)))
            if (local / PROMPT_FILE).is_file():
                return (f"mlflow run {run.info.run_id} artifact {CHECKPOINT_ARTIFACTS}/{PROMPT_FILE}",
                        local / PROMPT_FILE, _text(local / CONFIG_FILE))
        except Exception:
            pass  # missing artifact or unreachable store: fall back to the checkpoint folder
    found = _checkpoint(study, record, run, tmp)
    if found is None:
        raise ConfigError(
            f"trial {record.number}: no weights found (no MLflow artifact {CHECKPOINT_ARTIFACTS}/{PROMPT_FILE}, "
            f"no checkpoint folder under {study.tracking.root}/ray); was the study run with lorsp.tune?"
        )
    location, folder = found
    return f"checkpoint {location}", folder / PROMPT_FILE, _text(folder / CONFIG_FILE)


def fetch_gallery(study: StudyConfig, record: TrialRecord, run: Any | None, store: Any | None,
                  tmp: Path) -> Path | None:
    """The trial's prompt gallery: MLflow artifact `prompts/gallery.png`, else its checkpoint folder's; None
    for a trial that drew none (stopped before its last epoch, or recorded before galleries existed)."""
    if run is not None and store is not None:
        try:
            target = tmp / "gallery"
            target.mkdir(exist_ok=True)
            local = Path(store.client.download_artifacts(run.info.run_id, f"{PROMPT_ARTIFACTS}/{GALLERY_FILE}",
                                                         str(target)))
            if local.is_file():
                return local
        except Exception:
            pass  # no such artifact or an unreachable store: look in the checkpoint folder
    found = _checkpoint(study, record, run, tmp)
    if found is not None and (found[1] / GALLERY_FILE).is_file():
        return found[1] / GALLERY_FILE
    return None


def _checkpoint(study: StudyConfig, record: TrialRecord, run: Any | None, tmp: Path) -> tuple[str, Path] | None:
    """The trial's checkpoint, the path tagged on its MLflow run tried first (:func:`lorsp.layout.local_checkpoint`)."""
    return local_checkpoint(study, record, run.data.tags.get(CHECKPOINT) if run is not None else None, tmp)


def _text(file: Path) -> str | None:
    return file.read_text() if file.is_file() else None
