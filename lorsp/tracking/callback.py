"""The Tune callback that records a study in MLflow while it runs, on the Ray *driver*.

Workers need neither MLflow nor network access to the tracking server, and a trial that a scheduler
stops or that crashes is closed (KILLED / FAILED) by the driver, never left RUNNING. The one module
of :mod:`lorsp.tracking` that imports Ray.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import yaml
from ray.tune import Callback

from lorsp.config import ConfigError, StudyConfig
from lorsp.keys import CHECKPOINT, EPOCHS_DONE, TRIAL_KEY, TUNE_TRIAL_ID
from lorsp.metrics import reported
from lorsp.outcome import ERROR_KEY, TRACEBACK_KEY, Outcome, outcome_of
from lorsp.tracking.store import Store, connect, is_number, mark_closed, mark_open, one_line
from lorsp.uris import redact, remember, reveal, scrub

PLACEMENT = ("node_id", "node_ip", "hostname", "gpu")


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
            reason = scrub(one_line(err), self.uri)
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
            mark_open(self.parent_id, self.uri, self.experiment_id)

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
        metrics = {k: result[k] for k in reported(result, per_epoch=True) if is_number(result[k])}
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
                mark_closed(self.parent_id)

            self._safely("closing the study's parent run", close_parent)

    def _finish(self, trial: Any, errored: bool) -> None:
        last = dict(getattr(trial, "last_result", None) or {})
        result = {**last, **self._last.get(trial.trial_id, {})}
        # Inline trials get their checkpoint path only after the result (lorsp.searcher's callback).
        result.setdefault(CHECKPOINT, last.get(CHECKPOINT))
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
        checkpoint = result.get(CHECKPOINT)
        tags: dict[str, Any] = {"full_budget": str(outcome.state == "COMPLETE").lower(), EPOCHS_DONE: outcome.epochs,
                                "trial_state": outcome.state, "end_reason": outcome.reason}
        if outcome.error:
            tags["error"] = outcome.error[:500]
        if checkpoint:
            tags[CHECKPOINT] = checkpoint
        final = {k: result[k] for k in reported(result, per_epoch=False) if is_number(result[k])}
        final[EPOCHS_DONE] = float(outcome.epochs)
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
                return one_line(err)
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
                          f"({scrub(one_line(err), store.uri)})") from None
    if created:
        mark_open(parent_id, store.uri, store.experiment_id)
    return [MLflowCallback(study, store.uri, store.experiment_id, parent_id)]

