"""MLflow recording of a study: one experiment per study, a parent run, one child run per trial.

Everything here runs on the Ray *driver*: the recording is a Ray Tune callback
(:func:`tune_callbacks`), so workers need neither MLflow nor network access to the tracking
server, and a trial that a scheduler stops or that crashes is closed (KILLED / FAILED) by the
driver, never left RUNNING. The Optuna storage stays the source of truth: when MLflow fails during
a study the callback warns once and stops recording, the study carries on, and
:func:`finish_study` (or ``python -m lorsp.tracking relog``) rebuilds whatever is missing from the
Optuna storage once the tracking store answers again.

Layout of an experiment (name = study name)::

    <study>                 parent run   tags lorsp.role=study; params = the fixed study settings;
                                         artifacts study.yaml, pareto/front.{png,csv,parquet};
                                         metrics hypervolume, hypervolume_normalised, ...
      trial-<n>             child run    tags mlflow.parentRunId, lorsp.role=trial, optuna_trial,
                                         tune_trial_id, node_id, node_ip, hostname, gpu, pareto,
                                         pareto_rank; params = the sampled values; per-epoch metrics
                                         (step = epoch); artifacts checkpoint/prompt.safetensors,
                                         checkpoint/config.yaml, prompts/gallery.png (lorsp.gallery)

Default store: ``sqlite:////ABS/<tracking.root>/mlflow.db`` with artifacts under
``<tracking.root>/mlartifacts``; ``tracking.uri`` (``--tracking-uri``) names a server instead.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from lorsp.config import ConfigError, StudyConfig
from lorsp.gallery import GALLERY_FILE
from lorsp.metrics import reported
from lorsp.mlflow_views import OBJECTIVES_TAG, ROLE, STUDY
from lorsp.outcome import ERROR_KEY, TRACEBACK_KEY, Outcome, outcome_of, outcome_of_state
from lorsp.pareto import REFERENCE_RULE, TrialRecord, summarise
from lorsp.relocate import describe, relocate_store, under_root
from lorsp.report import plot_front, plot_fronts_by, trial_rows, write_table
from lorsp.search import TRIAL_KEY
from lorsp.uris import redact, remember, require_secret, reveal, scrub, with_hint

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
TUNE_TRIAL_ID = "tune_trial_id"
PARENT_ID = "mlflow.parentRunId"
CHECKPOINT_ARTIFACTS = "checkpoint"
PROMPT_ARTIFACTS = "prompts"

PLACEMENT = ("node_id", "node_ip", "hostname", "gpu")
VERSIONED = ("lorsp", "torch", "torchvision", "timm", "spikingjelly", "ray", "optuna", "mlflow", "numpy")
_CHECKPOINT_FILES = ("prompt.safetensors", "config.yaml")
_FETCHED_FILES = (*_CHECKPOINT_FILES, GALLERY_FILE)


def _quiet_mlflow_logs() -> None:
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)  # a user who sets these explicitly keeps their values
    import logging

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.store.sql"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------- where the store is
def tracking_uri(study: StudyConfig, override: str | None = None) -> str:
    """`override` (`--tracking-uri`), else `tracking.uri`, else the embedded sqlite store under the root."""
    from lorsp.search import embedded_uri

    return embedded_uri(study, override or study.tracking.uri, "mlflow.db")


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_location(study: StudyConfig, uri: str) -> str | None:
    """Absolute artifact folder for a new experiment: `mlartifacts/<study>` beside a sqlite database
    (so `ROOT/mlartifacts` for the default store), else under the root; None for a server (it
    decides, and proxies uploads to its --artifacts-destination)."""
    if is_server(uri) or uri.startswith("databricks"):
        return None
    from lorsp.search import default_root

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
            reason = _one_line(err)[:120]
        raise ConfigError(
            f"tracking.uri {redact(uri)}: no MLflow server answers ({scrub(reason, uri)}); start one (python -m "
            f"lorsp.ui --root DIR, or mlflow server ...) or drop --tracking-uri to record in the embedded store"
        ) from None
    if response.status_code >= 500:
        raise ConfigError(f"tracking.uri {redact(uri)}: the MLflow server answers HTTP {response.status_code}; "
                          "check its log")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    reason = text[0] if text else type(err).__name__
    return reason[:200]


class Store:
    """The study's MLflow experiment in one tracking store (a thin layer over MlflowClient)."""

    def __init__(self, study: StudyConfig, uri: str, experiment_id: str) -> None:
        from mlflow import MlflowClient

        self.study = study.redacted()  # what the store records of the study: its URIs without passwords
        self.uri = uri
        self.experiment_id = experiment_id
        self.client = MlflowClient(tracking_uri=uri)

    # ------------------------------------------------------------ runs
    def find_parent(self) -> Any | None:
        runs = self._search(f"tags.`{ROLE}` = 'study'", order_by=["attributes.start_time ASC"])
        return runs[0] if runs else None

    def child_runs(self) -> dict[int, Any]:
        """Child runs by Optuna trial number (the oldest one where a number appears twice)."""
        out: dict[int, Any] = {}
        for run in self._search(f"tags.`{ROLE}` = 'trial'", order_by=["attributes.start_time ASC"]):
            number = run.data.tags.get(OPTUNA_TRIAL, "")
            if number.lstrip("-").isdigit():
                out.setdefault(int(number), run)
        return out

    def _search(self, filter_string: str, order_by: list[str] | None = None) -> list[Any]:
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
            files = [folder / f for f in _CHECKPOINT_FILES if (folder / f).is_file()]
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


def _forget_artifact_repos() -> None:
    """MLflow caches each run's artifact repository process-wide, keyed by run id only: after a
    server came back at another address (re-log), the cached entry would still point at the old
    one. Connecting afresh drops that cache (it only saves a lookup per run)."""
    try:
        from mlflow.tracking._tracking_service import utils

        utils._artifact_repos_cache.clear()
    except (ImportError, AttributeError):
        pass


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

    _forget_artifact_repos()
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
                          f"({scrub(_one_line(err), uri)})") from None
    return Store(study, uri, experiment_id)


# ---------------------------------------------------------------- the Tune callback (driver side)
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


class MLflowCallback(Callback):
    """Records every Tune trial as a child run of the study's parent run.

    MLflow failures never reach Tune: the first one is reported in one warning line and recording
    stops for the rest of the study (each further call would wait for the dead server's timeouts);
    :func:`finish_study` fills the gaps from the Optuna storage when the store is back.
    """

    def __init__(self, study: StudyConfig, uri: str, experiment_id: str, parent_id: str,
                 warn: Callable[[str], None] | None = None) -> None:
        self.study = study.redacted()
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.failure: str | None = None
        self._warn = warn
        self._store: Store | None = None
        self._runs: dict[str, str] = {}  # tune trial id -> MLflow run id
        self._last: dict[str, dict[str, Any]] = {}
        self._placed: set[str] = set()
        self._closed: set[str] = set()
        self._names: dict[str, str] = {}  # tune trial id -> "trial <optuna number>", for messages

    def _name(self, trial_id: str) -> str:
        return self._names.get(trial_id, f"trial {trial_id}")

    # Tune pickles its run config (callbacks included) into tuner.pkl: keep the client and the
    # password out of it (a copy in this process gets the URI back: lorsp.uris.remember).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        state["_warn"] = None
        state["uri"] = remember(self.uri)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({**state, "uri": reveal(state["uri"])})

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.study, self.uri, self.experiment_id)
        return self._store

    def _safely(self, what: str, fn: Callable[[], Any]) -> Any:
        if self.failure is not None:
            return None
        try:
            return fn()
        except Exception as err:  # any MLflow/network error: warn once, keep the study running
            reason = scrub(_one_line(err), self.uri)
            self.failure = f"{what}: {reason}"
            message = (
                f"warning: MLflow at {redact(self.uri)} failed while {what} ({reason}); recording stops for "
                f"this study, its results stay in the Optuna storage; re-log them later with: "
                f"python -m lorsp.tracking relog --name {self.study.name} --root {self.study.tracking.root}"
            )
            (self._warn or (lambda m: print(m, file=sys.stderr, flush=True)))(message)
            return None

    # ------------------------------------------------------------ Tune hooks
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        def reopen() -> None:
            client = self.store.client
            if client.get_run(self.parent_id).info.status != "RUNNING":
                client.update_run(self.parent_id, status="RUNNING")
                self.store.set_tags(self.parent_id, {"resumed": time.strftime("%Y-%m-%d %H:%M:%S")})
                self.store.log_text(self.parent_id, yaml.safe_dump(self.study.model_dump(), sort_keys=False),
                                    f"resumes/study-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
            # Children left RUNNING by an earlier, interrupted driver: that driver is gone.
            for run in self.store.child_runs().values():
                if run.info.status == "RUNNING":
                    self.store.set_tags(run.info.run_id, {"end_reason": "interrupted (driver stopped)"})
                    client.set_terminated(run.info.run_id, "KILLED")
            _OPEN_PARENTS[self.parent_id] = (self.uri, self.experiment_id)

        self._safely("opening the study's parent run", reopen)

    def _run_id(self, trial: Any) -> str | None:
        """The trial's child run: created when it starts, or reopened when an interrupted trial
        resumes under the same Optuna number (one run per trial number, never a second)."""
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            config = dict(trial.config or {})
            number = (config.pop(TRIAL_KEY, None) or {}).get("number")
            self._names[trial.trial_id] = f"trial {number}" if number is not None else f"trial {trial.trial_id}"
            run_id = self._safely(f"opening the run of {self._names[trial.trial_id]}",
                                  lambda: self._open_child(number, trial.trial_id, config))
            if run_id is not None:
                self._runs[trial.trial_id] = run_id
        return run_id

    def _open_child(self, number: int | None, tune_trial_id: str, params: dict[str, Any]) -> str:
        existing = self.store.child_runs().get(number) if number is not None else None
        if existing is None:
            return self.store.create_child(self.parent_id, number, tune_trial_id, params)
        run_id = existing.info.run_id
        self.store.client.update_run(run_id, status="RUNNING")
        self.store.set_tags(run_id, {TUNE_TRIAL_ID: tune_trial_id, "resumed": "true", "end_reason": "running"})
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._last[trial.trial_id] = {k: v for k, v in result.items() if k != "config"}
        run_id = self._run_id(trial)
        if run_id is None or result.get(ERROR_KEY):
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        metrics = {k: result[k] for k in reported(result, per_epoch=True) if _is_number(result[k])}
        self._safely(f"logging epoch {step} of {self._name(trial.trial_id)}",
                     lambda: self.store.log_metrics(run_id, metrics, step))
        if trial.trial_id not in self._placed and any(k in result for k in PLACEMENT):
            self._placed.add(trial.trial_id)
            tags = {k: result[k] for k in PLACEMENT if k in result}
            self._safely(f"tagging {self._name(trial.trial_id)}", lambda: self.store.set_tags(run_id, tags))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=True)

    def close_unfinished(self, reason: str) -> None:
        """The driver is stopping: runs of trials that did not end become KILLED (interrupted), and
        the parent too unless the study ran to its end (then :func:`finish_study` closes it)."""
        for trial_id in list(self._runs):
            if trial_id not in self._closed:
                epochs = int(self._last.get(trial_id, {}).get("epoch", 0) or 0)
                self._finish_run(trial_id, Outcome("INTERRUPTED", epochs))
        if reason != "the study ended":
            def close_parent() -> None:
                self.store.set_tags(self.parent_id, {"end_reason": reason})
                self.store.client.set_terminated(self.parent_id, "KILLED")
                _OPEN_PARENTS.pop(self.parent_id, None)

            self._safely("closing the study's parent run", close_parent)

    def _finish(self, trial: Any, errored: bool) -> None:
        last = dict(getattr(trial, "last_result", None) or {})
        result = {**last, **self._last.get(trial.trial_id, {})}
        # Inline trials get their checkpoint path only after the result (lorsp.searcher's callback).
        result.setdefault("checkpoint_path", last.get("checkpoint_path"))
        if errored and not result.get(ERROR_KEY):
            result[ERROR_KEY] = _trial_error(trial)
        self._last[trial.trial_id] = result
        self._run_id(trial)
        self._finish_run(trial.trial_id, outcome_of(result, errored=errored))

    def _finish_run(self, trial_id: str, outcome: Outcome) -> None:
        if trial_id in self._closed:
            return
        self._closed.add(trial_id)
        run_id = self._runs.get(trial_id)
        if run_id is None:
            return
        result = self._last.get(trial_id, {})
        checkpoint = result.get("checkpoint_path")
        tags: dict[str, Any] = {"full_budget": str(outcome.state == "COMPLETE").lower(), "epochs_done": outcome.epochs,
                                "trial_state": outcome.state, "end_reason": outcome.reason}
        if outcome.error:
            tags["error"] = outcome.error[:500]
        if checkpoint:
            tags["checkpoint_path"] = checkpoint
        final = {k: result[k] for k in reported(result, per_epoch=False) if _is_number(result[k])}
        final["epochs_done"] = float(outcome.epochs)
        what = f"closing the run of {self._name(trial_id)}"
        self._safely(what, lambda: self.store.log_metrics(run_id, final, outcome.epochs))
        self._safely(what, lambda: self.store.set_tags(run_id, tags))
        if result.get(TRACEBACK_KEY):
            self._safely(what, lambda: self.store.log_text(run_id, str(result[TRACEBACK_KEY]), "error.txt"))
        if outcome.state != "INTERRUPTED":
            self._safely(f"uploading the checkpoint of {self._name(trial_id)}",
                         lambda: self.store.log_checkpoint(run_id, checkpoint))
        self._safely(what, lambda: self.store.client.set_terminated(run_id, outcome.mlflow_status))


def _trial_error(trial: Any) -> str:
    for getter in ("get_error", "get_pickled_error"):
        fn = getattr(trial, getter, None)
        if callable(fn):
            try:
                err = fn()
            except Exception:
                err = None
            if err is not None:
                return _one_line(err)
    return "the trial's process failed repeatedly; see the trial's error file in the Ray experiment folder"


def tune_callbacks(study: StudyConfig, uri: str | None = None) -> list[Callback]:
    """The Tune callbacks that record `study` in MLflow; opens or reuses the study's parent run.

    Called on the driver before the search starts: a tracking server that does not answer raises a
    one-line ConfigError here, within seconds, before any trial runs. A study that already has a
    parent run (`--resume`) reuses it rather than creating a second one.
    """
    store = connect(study, uri)
    try:
        parent_id, created = store.ensure_parent()
    except Exception as err:
        raise ConfigError(f"tracking.uri {redact(store.uri)}: cannot create the study's parent run "
                          f"({scrub(_one_line(err), store.uri)})") from None
    if created:
        _OPEN_PARENTS[parent_id] = (store.uri, store.experiment_id)
    return [MLflowCallback(study, store.uri, store.experiment_id, parent_id)]


# ---------------------------------------------------------------- after the search: Pareto + reconcile
def finish_study(study: StudyConfig, records: list[TrialRecord], uri: str | None = None,
                 warn: Callable[[str], None] | None = None, warned: bool = False) -> dict[str, Any] | None:
    """Close the study's MLflow runs and add the Pareto selection; never raises.

    Reconciles MLflow with the Optuna records (the truth): a trial without a child run (MLflow was
    down when it ran) gets one from the stored values, runs still RUNNING are closed, and every
    child run gets `pareto` / `pareto_rank` tags; the parent gets the hypervolume and the front
    plot. Returns a summary dict, or None when the store could not be reached (a warning says how
    to re-log, unless `warned`: the recording callback already said so during the study).
    """
    warn = warn or (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        done = record_study(study, records, uri)
    except Exception as err:
        if warned:
            return None
        reason = scrub(_one_line(err), tracking_uri(study, uri))
        warn(f"warning: could not record the end of study '{study.name}' in MLflow ({reason}); the results "
             f"are in the Optuna storage: re-log them with python -m lorsp.tracking relog --name {study.name} "
             f"--root {study.tracking.root}")
        return None
    print(f"MLflow: study '{study.name}' recorded in {redact(done['uri'])} (experiment {done['experiment_id']}, "
          f"parent run {done['parent_run_id']}); browse it with: {ui_command(study, done['uri'])}", flush=True)
    return done


def ui_command(study: StudyConfig, uri: str) -> str:
    """The `lorsp.ui` command that shows this study: `--root` for the embedded store under the study's
    root, `--tracking-uri` (password masked, with a note on how to give it) for any other store."""
    from lorsp.search import default_root

    if uri == f"sqlite:///{default_root(study) / 'mlflow.db'}":
        return f"python -m lorsp.ui --root {shlex.quote(study.tracking.root)}"
    return with_hint(f"python -m lorsp.ui --tracking-uri {shlex.quote(redact(uri) or uri)}", uri)


def record_study(study: StudyConfig, records: list[TrialRecord], uri: str | None = None,
                 checkpoint_lookup: Callable[[TrialRecord], str | None] | None = None) -> dict[str, Any]:
    """The work of :func:`finish_study` and `relog`, raising ConfigError on an unreachable store."""
    from lorsp.search import default_root

    store = connect(study, uri)
    parent_id, _ = store.ensure_parent()
    children = store.child_runs()
    objectives = [(o.metric, o.mode) for o in study.objectives]
    lookup = checkpoint_lookup or (lambda record: find_checkpoint(study, record))
    created = updated = 0
    run_ids: dict[int, str] = {}
    for record in records:
        outcome = outcome_of_state(record.state, record.epochs_done, record.error)
        if outcome is None:
            continue
        run = children.get(record.number)
        status = outcome.mlflow_status
        if run is None:
            run_id = store.create_child(parent_id, record.number, record.tune_trial_id, record.params)
            store.set_tags(run_id, {"relogged": "true", "full_budget": str(record.full_budget).lower(),
                                    "epochs_done": record.epochs_done, "trial_state": outcome.state,
                                    "end_reason": outcome.reason})
            store.log_metrics(run_id, _record_metrics(record), record.epochs_done)
            checkpoint = lookup(record)
            if checkpoint:
                store.set_tags(run_id, {"checkpoint_path": checkpoint})
                store.log_checkpoint(run_id, checkpoint)
            store.client.set_terminated(run_id, status)
            created += 1
        else:
            run_id = run.info.run_id
            # Metrics a dead store missed, or whose latest value is an earlier epoch's: the final
            # value from the Optuna record, logged at the last epoch so that it becomes the latest.
            stale = {k: v for k, v in _record_metrics(record).items()
                     if k not in run.data.metrics
                     or not math.isclose(run.data.metrics[k], v, rel_tol=1e-9, abs_tol=1e-12)}
            if stale:
                store.log_metrics(run_id, stale, record.epochs_done)
            if not any(a.path == CHECKPOINT_ARTIFACTS for a in _safe_list(store, run_id)):
                checkpoint = under_root(run.data.tags.get("checkpoint_path"), default_root(study)) or lookup(record)
                if checkpoint:
                    store.log_checkpoint(run_id, checkpoint)
            if run.info.status == "RUNNING":
                store.set_tags(run_id, {"trial_state": outcome.state, "end_reason": outcome.reason})
                store.client.set_terminated(run_id, status)
            updated += 1
        run_ids[record.number] = run_id
        store.set_tags(run_id, {"pareto": str(record.pareto).lower(),
                                "pareto_rank": "none" if record.pareto_rank is None else record.pareto_rank,
                                "pareto_eligible": str(record.pareto_rank is not None).lower()})
    summary = summarise(records, objectives)
    metrics = {
        "hypervolume": summary.hypervolume, "hypervolume_normalised": summary.hypervolume_normalised,
        "pareto_front_size": float(len(summary.front)), "trials": float(len(records)),
        "trials_full_budget": float(len(summary.eligible)),
        "trials_failed": float(sum(1 for r in records if r.state == "FAIL")),
    }
    store.log_metrics(parent_id, metrics, len(summary.eligible))
    store.set_tags(parent_id, {
        "hv_reference": json.dumps(dict(zip([m for m, _ in objectives], map(float, summary.reference)))),
        "hv_reference_rule": REFERENCE_RULE,
        "pareto_trials": ",".join(str(r.number) for r in summary.front),
    })
    with tempfile.TemporaryDirectory(prefix="lorsp-pareto-") as tmp:
        rows = trial_rows(records, objectives)
        for row in rows:
            row["mlflow_run_id"] = run_ids.get(row["trial"])
        files = write_table([r for r in rows if r["pareto"]], tmp, "front") if summary.front else []
        files += write_table(rows, tmp, "trials") if rows else []
        if summary.eligible:
            files.append(plot_front(records, objectives, Path(tmp) / "front.png",
                                    title=f"{study.name}: Pareto front (validation)"))
            if len({r.params.get("method") for r in summary.eligible} - {None}) > 1:
                # Several methods in one study: each its own front on the same axes (LoRSP's
                # readings apart when the study balances them as cells of their own).
                by = ["method", *[k for k, knob in study.space.items() if knob.balanced and k != "method"]]
                files.append(plot_fronts_by(records, objectives, by, Path(tmp) / "front_by_method.png",
                                            title=f"{study.name}: one front per method (validation)"))
        for file in files:
            store.client.log_artifact(parent_id, str(file), "pareto")
    store.client.set_terminated(parent_id, "FINISHED")
    _OPEN_PARENTS.pop(parent_id, None)
    return {"uri": store.uri, "experiment_id": store.experiment_id, "parent_run_id": parent_id,
            "created": created, "updated": updated, "front": [r.number for r in summary.front],
            "hypervolume": summary.hypervolume, "reference": summary.reference.tolist()}


def _safe_list(store: Store, run_id: str) -> list[Any]:
    try:
        return list(store.client.list_artifacts(run_id))
    except Exception:
        return []


def _record_metrics(record: TrialRecord) -> dict[str, float]:
    out = {k: float(v) for k, v in record.values.items() if _is_number(v)}
    out["epochs_done"] = float(record.epochs_done)
    return out


# ---------------------------------------------------------------- checkpoints on disk
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
    from lorsp.search import default_root

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


# ---------------------------------------------------------------- helpers
def _is_number(value: Any) -> bool:
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


def relog(name: str, storage: str | None = None, tracking: str | None = None,
          root: str | None = None) -> dict[str, Any]:
    """Rebuild a stored study's parent and child runs in MLflow from its Optuna storage."""
    from lorsp.search import open_stored_study, trial_records

    study, opened, _ = open_stored_study(name, storage, root)
    records = trial_records(study, opened)
    return record_study(study, records, tracking)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.tracking", description="MLflow recording of lorsp studies.")
    commands = parser.add_subparsers(dest="command", required=True)
    re_log = commands.add_parser("relog", help="rebuild a study's MLflow runs from its Optuna storage "
                                               "(after the tracking server was down)")
    re_log.add_argument("--name", required=True, help="study name")
    re_log.add_argument("--storage", help="Optuna RDB URI (default: sqlite ROOT/optuna.db)")
    re_log.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's, else sqlite ROOT/mlflow.db)")
    re_log.add_argument("--root", help="folder of the embedded stores (default lorsp-runs)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        done = relog(args.name, args.storage, args.tracking_uri, args.root)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the store answered but refused: still one line
        reason = scrub(_one_line(err), args.tracking_uri, args.storage)
        print(f"error: re-logging study '{args.name}' failed: {reason}", file=sys.stderr)
        return 2
    print(f"re-logged study '{args.name}' to {redact(done['uri'])}: parent run {done['parent_run_id']}, "
          f"{done['created']} child runs created, {done['updated']} updated; Pareto front: trials "
          f"{', '.join(map(str, done['front'])) or 'none'}; hypervolume {done['hypervolume']:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
