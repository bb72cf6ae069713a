"""The Ray Tune searcher of a study: Ray's public `Searcher` over Optuna's ask-and-tell.

Each Tune trial is one Optuna trial: :meth:`StudySearcher.suggest` asks the stored study for a
trial and samples the conditional space on it (each method only its own knobs, define-by-run),
:meth:`StudySearcher.on_trial_complete` tells the study how the trial ended. What lorsp adds: a
budget shared equally among the cells of the `balanced` knobs, the outcome rules of
:mod:`lorsp.outcome` (a trial stopped early is PRUNED, never COMPLETE with partial values), the
metrics and checkpoint of every trial as Optuna attributes, and trials that the driver stops going
back to the queue (WAITING) with their last checkpoint, so that ``--resume`` finishes them.

Its own class over public APIs only, rather than a subclass of Ray's OptunaSearch reading that
class's private state: Ray may rename its internals in any release, Optuna its trial ids too; the
storage is named here by the public storage methods (:func:`lorsp.search.storage_trial_id`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.search import Searcher

from lorsp.config import StudyConfig
from lorsp.metrics import is_finite_number, reported
from lorsp.outcome import ERROR_KEY, Outcome, outcome_of
from lorsp.samplers import create_sampler
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
    knob_params,
    mark_interrupted,
    next_balanced_cell,
    storage_trial_id,
)


@dataclass(frozen=True)
class Asked:
    """The Optuna trial a Tune trial got: its number (what the study names it by), its id in the
    storage (what the storage's methods take), and the config handed to Tune."""

    number: int
    storage_id: int
    config: dict[str, Any]


class StudySearcher(Searcher):
    """Asks the stored study for each Tune trial and tells it how the trial ended.

    It never answers ``None`` or ``Searcher.FINISHED``: the driver sets Tune's `num_samples` to the
    trials still to run, and Tune's ConcurrencyLimiter (from `max_concurrent_trials`) holds back
    suggestions beyond `search.max_concurrent`. Tune pickles it (with the study, its sampler and its
    `StudyStorage`, whose pickle carries no password) into the experiment folder.
    """

    def __init__(self, study: StudyConfig, storage: optuna.storages.BaseStorage, history: int) -> None:
        self._objectives = [o.metric for o in study.objectives]
        super().__init__(metric=self._objectives, mode=[o.mode for o in study.objectives])
        self._cells = balanced_cells(study)
        self._space = ConditionalSpace(study)
        self.storage = storage  # the study's storage: where trial attributes and states are written
        self.study = optuna.load_study(study_name=study.name, storage=storage, sampler=create_sampler(study, history),
                                       pruner=optuna.pruners.NopPruner())  # multi-objective: never pruned by Optuna
        self._asked: dict[str, Asked] = {}
        self._ended: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Refuse a Tune `param_space`: the space is the study's own (its file's `space:`)."""
        return False

    # ------------------------------------------------------------ asking
    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self._asked:
            return self._asked[trial_id].config
        if self._cells:
            self._enqueue_balanced()
        trial = self.study.ask()
        self._space(trial)  # define-by-run: the method first, then only the knobs it reads
        params = knob_params(trial.params)  # `lr@none` is Optuna's name for the probe's lr; the trial sets lr
        attrs = trial.user_attrs
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        # A trial popped from the queue after an interruption continues from where it got to.
        resume_from = attrs.get(CHECKPOINT) if attrs.get(INTERRUPTIONS) else None
        params[TRIAL_KEY] = {"number": trial.number, "resume_from": resume_from}
        self._asked[trial_id] = Asked(trial.number, storage_trial_id(self.storage, self.study.study_name,
                                                                     trial.number), params)
        return params

    def _enqueue_balanced(self) -> None:
        """Fix the balanced knobs of the next new trial to their least-used cell (Optuna's queue)."""
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return  # an interrupted trial is next; it has its cell already
        self.study.enqueue_trial(next_balanced_cell(self.study, self._cells))

    # ------------------------------------------------------------ telling
    def _running(self, trial_id: str) -> Asked | None:
        """The Optuna trial of a Tune trial this searcher handed out and has not ended yet."""
        return None if trial_id in self._ended else self._asked.get(trial_id)

    def record_checkpoint(self, trial_id: str, path: str, epoch: int | None) -> None:
        """Keep a running trial's latest checkpoint in Optuna: it is where an interrupted trial resumes."""
        asked = self._running(trial_id)
        if asked is None:
            return
        self.storage.set_trial_user_attr(asked.storage_id, CHECKPOINT, str(path))
        if epoch is not None:
            self.storage.set_trial_user_attr(asked.storage_id, EPOCHS_DONE, int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        asked = self._running(trial_id)
        if asked is None:
            return
        result = result or {}
        outcome = outcome_of(result, errored=error)
        values = None
        if outcome.state == "COMPLETE":
            values = [result.get(m) for m in self._objectives]
            bad = [m for m, v in zip(self._objectives, values) if not is_finite_number(v)]
            if bad:
                outcome = Outcome("FAIL", outcome.epochs, f"objective {', '.join(bad)} missing or not finite")
                values = None
        attrs: dict[str, Any] = {EPOCHS_DONE: outcome.epochs}
        attrs.update({METRICS_PREFIX + name: float(result[name]) for name in reported(result)
                      if is_finite_number(result.get(name))})
        if result.get(CHECKPOINT):
            attrs[CHECKPOINT] = str(result[CHECKPOINT])
        if outcome.error:
            attrs[ERROR] = outcome.error
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(asked.storage_id, key, value)
        self.study.tell(asked.number, values, state=getattr(TrialState, outcome.optuna_state))
        self._ended.add(trial_id)

    def interrupt_unfinished(self) -> int:
        """Put every trial this searcher handed out and that did not end back in the queue."""
        count = 0
        for trial_id, asked in self._asked.items():
            if trial_id in self._ended:
                continue
            self._ended.add(trial_id)
            if self.storage.get_trial(asked.storage_id).state != TrialState.RUNNING:
                continue
            mark_interrupted(self.storage, self.study.study_name, asked.number)
            count += 1
        return count

    # ------------------------------------------------------------ Tune's snapshots
    def save(self, checkpoint_path: str) -> None:
        """Tune's searcher snapshot (`searcher-state-*.pkl`): the whole searcher, sampler state included."""
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__.copy(), out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as src:
            self.__dict__.update(pickle.load(src))

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
