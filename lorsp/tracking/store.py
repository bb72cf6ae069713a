"""The study's MLflow experiment in one tracking store: where the store is, how it is opened, what
its runs record. No Ray: the tools that read a study back (export, confirm, relog) use only this.

Default store: ``sqlite:////ABS/<tracking.root>/mlflow.db`` with artifacts under
``<tracking.root>/mlartifacts``; ``tracking.uri`` (``--tracking-uri``) names a server instead.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from lorsp.config import ConfigError, StudyConfig
from lorsp.gallery import GALLERY_FILE
from lorsp.keys import TUNE_TRIAL_ID
from lorsp.layout import CHECKPOINT_FILES, MLFLOW_DB, default_root, embedded_uri, fetch_checkpoint
from lorsp.mlflow_views import OBJECTIVES_TAG, ROLE, STUDY
from lorsp.relocate import describe, relocate_store
from lorsp.uris import redact, require_secret, scrub

MLFLOW_CLIENT_ENV = {
    # MLflow's HTTP client retries 7 times with exponential backoff and waits 120 s per request by
    # default: minutes before a dead server is noticed. A study wants to know within seconds.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # no "View run at" line per trial
}
PROBE_TIMEOUT_S = 3.0

OPTUNA_TRIAL = "optuna_trial"
PARENT_ID = "mlflow.parentRunId"
CHECKPOINT_ARTIFACTS = "checkpoint"
PROMPT_ARTIFACTS = "prompts"

VERSIONED = ("lorsp", "torch", "torchvision", "timm", "spikingjelly", "ray", "optuna", "mlflow", "numpy")


def _quiet_mlflow_logs() -> None:
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)  # a user who sets these explicitly keeps their values
    import logging

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.store.sql"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------- where the store is
def tracking_uri(study: StudyConfig, override: str | None = None) -> str:
    """`override` (`--tracking-uri`), else `tracking.uri`, else the embedded sqlite store under the root."""
    return embedded_uri(study, override or study.tracking.uri, MLFLOW_DB)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_location(study: StudyConfig, uri: str) -> str | None:
    """Absolute artifact folder for a new experiment: `mlartifacts/<study>` beside a sqlite database
    (so `ROOT/mlartifacts` for the default store), else under the root; None for a server (it
    decides, and proxies uploads to its --artifacts-destination)."""
    if is_server(uri) or uri.startswith("databricks"):
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study.name)
    base = default_root(study)
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        base = Path(uri.removeprefix("sqlite:///")).parent  # artifacts beside the database file
    folder = base / "mlartifacts" / safe
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConfigError at once when nothing answers at a tracking server's address."""
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as err:
        if isinstance(err, requests.Timeout):
            reason = f"no answer within {timeout:g} s"
        elif isinstance(err, requests.ConnectionError):
            reason = "connection refused or host unreachable"
        else:
            reason = one_line(err)[:120]
        raise ConfigError(
            f"tracking.uri {redact(uri)}: no MLflow server answers ({scrub(reason, uri)}); start one (python -m "
            f"lorsp.ui --root DIR, or mlflow server ...) or drop --tracking-uri to record in the embedded store"
        ) from None
    if response.status_code >= 500:
        raise ConfigError(f"tracking.uri {redact(uri)}: the MLflow server answers HTTP {response.status_code}; "
                          "check its log")


def one_line(err: BaseException) -> str:
    """An error as one line of at most 200 characters."""
    text = str(err).strip().splitlines()
    reason = text[0] if text else type(err).__name__
    return reason[:200]


class Store:
    """The study's MLflow experiment in one tracking store (a thin layer over MlflowClient)."""

    def __init__(self, study: StudyConfig, uri: str, experiment_id: str) -> None:
        from lorsp.tracking.client import TrackingClient  # uploads that a moved store cannot send astray

        self.study = study.redacted()  # what the store records of the study: its URIs without passwords
        self.uri = uri
        self.experiment_id = experiment_id
        self.client = TrackingClient(tracking_uri=uri)

    # ------------------------------------------------------------ runs
    def find_parent(self) -> Any | None:
        runs = self.search_runs(f"tags.`{ROLE}` = 'study'", order_by=["attributes.start_time ASC"])
        return runs[0] if runs else None

    def child_runs(self) -> dict[int, Any]:
        """Child runs by Optuna trial number (the oldest one where a number appears twice)."""
        out: dict[int, Any] = {}
        for run in self.search_runs(f"tags.`{ROLE}` = 'trial'", order_by=["attributes.start_time ASC"]):
            number = run.data.tags.get(OPTUNA_TRIAL, "")
            if number.lstrip("-").isdigit():
                out.setdefault(int(number), run)
        return out

    def search_runs(self, filter_string: str, order_by: list[str] | None = None) -> list[Any]:
        """Every run of the experiment that `filter_string` matches, across all pages."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           order_by=order_by, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def ensure_parent(self) -> tuple[str, bool]:
        """(parent run id, created?): the study's parent run, created with its settings if missing."""
        found = self.find_parent()
        if found is not None:
            return found.info.run_id, False
        study = self.study
        commit, dirty = _git_commit()
        tags = {ROLE: "study", STUDY: study.name, "sampler": study.search.sampler,
                "seed": str(study.search.seed),
                "selection": "validation (test accuracy is reported, never selected on)",
                OBJECTIVES_TAG: ", ".join(f"{o.mode} {o.metric}" for o in study.objectives)}
        if commit:
            tags["mlflow.source.git.commit"] = commit
            tags["git_commit"] = commit
            tags["git_dirty"] = str(dirty).lower()
        tags.update({f"version.{name}": v for name, v in _versions().items()})
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=study.name)
        run_id = run.info.run_id
        self.log_params(run_id, _flatten_config(study))
        self.log_text(run_id, yaml.safe_dump(study.model_dump(), sort_keys=False), "study.yaml")
        return run_id, True

    # log_batch splits a batch above MLflow's per-request limits itself.
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(str(k), _param_value(v)) for k, v in params.items()],
                              synchronous=True)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, int(step)) for k, v in metrics.items()],
                              synchronous=True)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()], synchronous=True)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_checkpoint(self, run_id: str, checkpoint: str | None) -> bool:
        """Upload the prompt+head (safetensors) and the resolved config of a trial's checkpoint, and
        its prompt gallery (drawn after the last epoch, and after epochs a scheduler may stop the trial
        on) as `prompts/gallery.png`."""
        if not checkpoint:
            return False
        with tempfile.TemporaryDirectory(prefix="lorsp-ckpt-") as tmp:
            folder = fetch_checkpoint(checkpoint, Path(tmp))
            if folder is None:
                return False
            files = [folder / f for f in CHECKPOINT_FILES if (folder / f).is_file()]
            if not files:
                return False
            for file in files:
                self.client.log_artifact(run_id, str(file), CHECKPOINT_ARTIFACTS)
            if (folder / GALLERY_FILE).is_file():
                self.client.log_artifact(run_id, str(folder / GALLERY_FILE), PROMPT_ARTIFACTS)
        return True

    def create_child(self, parent_id: str, number: int | None, tune_trial_id: str | None,
                     params: dict[str, Any]) -> str:
        name = f"trial-{number}" if number is not None else f"trial-{tune_trial_id}"
        tags = {PARENT_ID: parent_id, ROLE: "trial", STUDY: self.study.name}
        if number is not None:
            tags[OPTUNA_TRIAL] = str(number)
        if tune_trial_id:
            tags[TUNE_TRIAL_ID] = tune_trial_id
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id


def connect(study: StudyConfig, uri: str | None = None) -> Store:
    """Open (creating if needed) the study's experiment; every failure is one-line ConfigError.

    A server address is probed first with a short timeout, so a dead server is reported in
    seconds rather than after MLflow's retries. An embedded store that was moved or copied is
    first pointed at the artifacts beside it (:func:`lorsp.relocate.relocate_store`, one line says so).
    """
    _quiet_mlflow_logs()
    uri = tracking_uri(study, uri)
    require_secret(uri, "--tracking-uri")  # a URI read back from a record has no password to connect with
    if is_server(uri):
        probe_server(uri)
    moved = relocate_store(uri)  # a study folder copied from elsewhere: its artifacts are beside it now
    if moved:
        print(f"note: {describe(moved, uri)}", file=sys.stderr, flush=True)
    from mlflow import MlflowClient
    from mlflow.entities import LifecycleStage

    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(study.name)
        if experiment is None:
            experiment_id = client.create_experiment(study.name, artifact_location=artifact_location(study, uri),
                                                     tags={STUDY: study.name})
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == LifecycleStage.DELETED:
                client.restore_experiment(experiment_id)
    except ConfigError:
        raise
    except Exception as err:  # MlflowException, sqlalchemy, requests: all mean "cannot record here"
        raise ConfigError(f"tracking.uri {redact(uri)}: cannot open the MLflow store "
                          f"({scrub(one_line(err), uri)})") from None
    return Store(study, uri, experiment_id)


# ---------------------------------------------------------------- parent runs left open at exit
_OPEN_PARENTS: dict[str, tuple[str, str]] = {}
"""Parent runs this process opened and has not closed yet: run id -> (tracking uri, experiment id)."""


@atexit.register
def _close_open_parents() -> None:
    """A driver that exits without finish_study (interrupted, crashed) leaves nothing RUNNING:
    its parent run and any child run still open end as KILLED."""
    if not _OPEN_PARENTS:
        return
    from mlflow import MlflowClient

    for run_id, (uri, experiment_id) in list(_OPEN_PARENTS.items()):
        try:
            client = MlflowClient(tracking_uri=uri)
            if client.get_run(run_id).info.status != "RUNNING":
                continue
            running = f"tags.`{PARENT_ID}` = '{run_id}' and attributes.status = 'RUNNING'"
            for child in client.search_runs([experiment_id], running):
                client.set_terminated(child.info.run_id, "KILLED")
            client.set_terminated(run_id, "KILLED")
        except Exception:  # the store may be gone; nothing more can be done at exit
            pass
    _OPEN_PARENTS.clear()


def mark_open(run_id: str, uri: str, experiment_id: str) -> None:
    """A parent run this process opened: closed as KILLED at exit unless :func:`mark_closed` first."""
    _OPEN_PARENTS[run_id] = (uri, experiment_id)


def mark_closed(run_id: str) -> None:
    _OPEN_PARENTS.pop(run_id, None)


# ---------------------------------------------------------------- what a run records
def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _flatten_config(study: StudyConfig) -> dict[str, Any]:
    raw = study.model_dump()
    flat: dict[str, Any] = {"name": raw.pop("name")}
    space = raw.pop("space")
    objectives = raw.pop("objectives")
    flat["objectives"] = ", ".join(f"{o['mode']} {o['metric']}" for o in objectives)
    for key, knob in space.items():
        flat[f"space.{key}"] = {k: v for k, v in knob.items() if v is not None and v is not False}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node and prefix.count(".") < 2:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = node

    walk("", raw)
    return flat


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git_commit() -> tuple[str | None, bool]:
    """Commit of the repository the lorsp package is imported from, and whether it has local edits."""
    import lorsp

    repo = Path(lorsp.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False
