"""A copied study folder points at its own artifacts; the original is never touched (real MLflow
sqlite stores, real files). The moved-folder case on a real study is in tests/test_study_folder.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from lorsp.relocate import ARTIFACTS_DIR, relocate_store, under_root


def _store(root: Path) -> tuple[str, str]:
    """An embedded store laid out as lorsp.tracking lays it out, with one run and one artifact."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    folder = root / ARTIFACTS_DIR / "my study"  # a space: URIs are percent-encoded
    folder.mkdir(parents=True)
    experiment = client.create_experiment("my study", artifact_location=folder.as_uri())
    run = client.create_run(experiment).info.run_id
    (root / "note.txt").write_text("hello")
    client.log_artifact(run, str(root / "note.txt"), "notes")
    return uri, run


def test_a_copy_reads_its_own_artifacts_and_the_original_is_untouched(tmp_path: Path):
    from mlflow import MlflowClient

    original = tmp_path / "head" / "lorsp-runs"
    uri, run = _store(original)
    assert relocate_store(uri) == []  # where it was written: nothing to do
    copy = tmp_path / "laptop" / "lorsp-runs"
    shutil.copytree(original, copy)
    copy_uri = f"sqlite:///{copy / 'mlflow.db'}"
    moved = relocate_store(copy_uri)
    assert [(m.old, m.new, m.rows) for m in moved] == [
        ((original / ARTIFACTS_DIR).as_uri() + "/", (copy / ARTIFACTS_DIR).as_uri() + "/", 2)]  # experiment + run
    (original / ARTIFACTS_DIR / "my study" / run / "artifacts" / "notes" / "note.txt").write_text("original's")
    local = MlflowClient(tracking_uri=copy_uri).download_artifacts(run, "notes/note.txt", str(tmp_path))
    assert Path(local).read_text() == "hello"  # the copy's file, not the original's
    assert relocate_store(copy_uri) == []  # done once
    assert MlflowClient(tracking_uri=uri).get_run(run).info.artifact_uri.startswith(original.as_uri())


def test_a_copy_without_its_artifacts_is_left_as_it_is(tmp_path: Path):
    original = tmp_path / "head"
    uri, _ = _store(original)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(original / "mlflow.db", bare / "mlflow.db")  # the database alone: nothing to point at
    assert relocate_store(f"sqlite:///{bare / 'mlflow.db'}") == []
    assert relocate_store("http://127.0.0.1:5000") == [] and relocate_store(f"sqlite:///{tmp_path / 'none.db'}") == []


def test_recorded_paths_are_found_under_the_new_root(tmp_path: Path):
    checkpoint = tmp_path / "new" / "ray" / "exp" / "trial-1" / "checkpoint_000002"
    checkpoint.mkdir(parents=True)
    old = "/gone/lorsp-runs/ray/exp/trial-1/checkpoint_000002"
    assert under_root(old, tmp_path / "new") == str(checkpoint)
    assert under_root(str(checkpoint), tmp_path / "elsewhere") == str(checkpoint)  # still there: kept
    assert under_root("/gone/nowhere/checkpoint_9", tmp_path / "new") == "/gone/nowhere/checkpoint_9"
    assert under_root("s3://bucket/ray/x", tmp_path / "new") == "s3://bucket/ray/x"
    assert under_root(None, tmp_path) is None


def test_a_copy_repointed_in_the_same_process_uploads_into_itself(tmp_path: Path):
    """lorsp's client finds the run's artifact store afresh (lorsp/tracking/client.py): MLflow's own
    client keeps, process-wide and by run id, the store it first found, and so writes a re-pointed
    run's new artifacts into the original folder (or to a server's old address)."""
    from mlflow import MlflowClient

    from lorsp.tracking.client import TrackingClient

    original = tmp_path / "head"
    _, run = _store(original)  # MLflow's client logged into the original: it remembers that store
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    copy_uri = f"sqlite:///{copy / 'mlflow.db'}"
    assert relocate_store(copy_uri)
    runs = [root / ARTIFACTS_DIR / "my study" / run / "artifacts" for root in (original, copy)]
    (tmp_path / "late.txt").write_text("late")
    TrackingClient(tracking_uri=copy_uri).log_artifact(run, str(tmp_path / "late.txt"), "notes")
    TrackingClient(tracking_uri=copy_uri).log_text(run, "text", "notes/text.txt")
    assert (runs[1] / "notes" / "late.txt").read_text() == "late" and (runs[1] / "notes" / "text.txt").is_file()
    assert not (runs[0] / "notes" / "late.txt").exists() and not (runs[0] / "notes" / "text.txt").exists()
    # Why: MLflow's client sends the same upload to the store it remembers, the original.
    MlflowClient(tracking_uri=copy_uri).log_artifact(run, str(tmp_path / "late.txt"), "stale")
    assert (runs[0] / "stale" / "late.txt").exists() and not (runs[1] / "stale").exists()
