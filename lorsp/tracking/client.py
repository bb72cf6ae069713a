"""An MlflowClient whose uploads find the run's artifact store afresh every time.

MLflow's client looks a run's artifact repository up in a process-wide cache keyed by the run id
alone. The same runs can be reached at another place within one process: a tracking server that
came back at a new address (`relog` into it), or an embedded store whose folder was copied and
re-pointed (:mod:`lorsp.relocate`). The cached repository still points at the old place, so uploads
would go to a dead server or into the original folder. This client builds the repository from the
run's artifact URI and its own tracking URI on each upload, with `get_artifact_repository`, the
function `mlflow.artifacts.download_artifacts` uses too: no cache, nothing to go stale, and no
private MLflow name (lorsp cleared that cache by hand before). The price is one `get_run` per
upload, a handful per trial.
"""

from __future__ import annotations

import os

from mlflow import MlflowClient
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository


class TrackingClient(MlflowClient):
    """MlflowClient with uncached artifact uploads; `log_text` and `log_dict` go through them too."""

    def artifact_repository(self, run_id: str) -> ArtifactRepository:
        """The run's artifact store as the run records it now, reached from this client's URI."""
        return get_artifact_repository(self.get_run(run_id).info.artifact_uri, tracking_uri=self.tracking_uri)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        repository = self.artifact_repository(run_id)
        if os.path.isdir(local_path):  # as MlflowClient does: a folder lands under its own name
            name = os.path.basename(os.path.normpath(local_path))
            repository.log_artifacts(local_path, f"{artifact_path}/{name}" if artifact_path else name)
        else:
            repository.log_artifact(local_path, artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self.artifact_repository(run_id).log_artifacts(local_dir, artifact_path)
