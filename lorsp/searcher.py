"""The Ray Tune searcher of a study: Ray's OptunaSearch, told how lorsp trials end.

Ray's OptunaSearch asks the Optuna study for each trial and tells it the result. lorsp adds what
that leaves out: the conditional space (each method samples only its own knobs, define-by-run), a
budget shared equally among the cells of the `balanced` knobs, the outcome rules of
:mod:`lorsp.outcome` (a trial stopped early is PRUNED, never COMPLETE with partial values), the
metrics and checkpoint of every trial as Optuna attributes, and trials that the driver stops
going back to the queue (WAITING) with their last checkpoint, so that ``--resume`` finishes them.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from lorsp.config import StudyConfig
from lorsp.metrics import reported
from lorsp.outcome import ERROR_KEY, Outcome, outcome_of
from lorsp.search import (
    CHECKPOINT,
    EPOCHS_DONE,
    ERROR,
    INTERRUPTIONS,
    METRICS_PREFIX,
    TRIAL_KEY,
    TUNE_TRIAL_ID,
    ConditionalSpace,
    balanced_cells,
    create_sampler,
    knob_params,
    mark_interrupted,
    next_balanced_cell,
)


class StudySearcher(OptunaSearch):
    def __init__(self, study: StudyConfig, storage: optuna.storages.BaseStorage, history: int) -> None:
        self._objectives = [o.metric for o in study.objectives]
        self._cells = balanced_cells(study)
        self.methods = list(study.space["method"].choices) if "method" in study.space else [study.prompt.method]
        super().__init__(space=ConditionalSpace(study), metric=self._objectives,
                         mode=[o.mode for o in study.objectives], sampler=create_sampler(study, history),
                         study_name=study.name, storage=storage)

    # ------------------------------------------------------------ asking
    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._cells:
            self._enqueue_balanced()
        params = super().suggest(trial_id)
        if not isinstance(params, dict):
            return params
        params = knob_params(params)  # `lr@none` is Optuna's name for the probe's lr; the trial sets lr
        ot_trial = self._ot_trials[trial_id]
        attrs = ot_trial.user_attrs
        ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        # A trial popped from the queue after an interruption continues from where it got to.
        resume_from = attrs.get(CHECKPOINT) if attrs.get(INTERRUPTIONS) else None
        params[TRIAL_KEY] = {"number": ot_trial.number, "resume_from": resume_from}
        return params

    def _enqueue_balanced(self) -> None:
        """Fix the balanced knobs of the next new trial to their least-used cell (Optuna's queue)."""
        if self._ot_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return  # an interrupted trial is next; it has its cell already
        self._ot_study.enqueue_trial(next_balanced_cell(self._ot_study, self._cells))

    # ------------------------------------------------------------ telling
    def record_checkpoint(self, trial_id: str, path: str, epoch: int | None) -> None:
        """Keep a running trial's latest checkpoint in Optuna: it is where an interrupted trial resumes."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        ot_trial.set_user_attr(CHECKPOINT, str(path))
        if epoch is not None:
            ot_trial.set_user_attr(EPOCHS_DONE, int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        result = result or {}
        outcome = outcome_of(result, errored=error)
        values = None
        if outcome.state == "COMPLETE":
            values = [result.get(m) for m in self._objectives]
            bad = [m for m, v in zip(self._objectives, values) if not _finite(v)]
            if bad:
                outcome = Outcome("FAIL", outcome.epochs, f"objective {', '.join(bad)} missing or not finite")
                values = None
        ot_trial.set_user_attr(EPOCHS_DONE, outcome.epochs)
        for name in reported(result):
            if _finite(result.get(name)):
                ot_trial.set_user_attr(METRICS_PREFIX + name, float(result[name]))
        if result.get(CHECKPOINT):
            ot_trial.set_user_attr(CHECKPOINT, str(result[CHECKPOINT]))
        if outcome.error:
            ot_trial.set_user_attr(ERROR, outcome.error)
        self._ot_study.tell(ot_trial, values, state=getattr(TrialState, outcome.optuna_state))
        self._completed_trials.add(trial_id)

    def interrupt_unfinished(self) -> int:
        """Put every trial this searcher handed out and that did not end back in the queue."""
        storage = self._ot_study._storage
        count = 0
        for trial_id, ot_trial in self._ot_trials.items():
            if trial_id in self._completed_trials:
                continue
            self._completed_trials.add(trial_id)
            if storage.get_trial(ot_trial._trial_id).state != TrialState.RUNNING:
                continue
            mark_interrupted(storage, ot_trial)
            count += 1
        return count

    def checkpoint_callback(self) -> Callback:
        """A Tune callback that hands each stored checkpoint to :meth:`record_checkpoint`.

        Inline trials store checkpoints through Tune (`on_checkpoint`); Ray Train trials report the
        path as the `checkpoint_path` metric. Written into `trial.last_result` too, the path reaches
        MLflow the same way for both launchers.
        """
        searcher = self

        class CheckpointPath(Callback):
            def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
                if checkpoint is None:
                    return
                result = trial.last_result or {}
                result[CHECKPOINT] = checkpoint.path
                searcher.record_checkpoint(trial.trial_id, checkpoint.path, result.get("epoch"))

            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                if result.get(CHECKPOINT) and not result.get(ERROR_KEY):
                    searcher.record_checkpoint(trial.trial_id, result[CHECKPOINT], result.get("epoch"))

        return CheckpointPath()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
