"""The names a trial is recorded under, one home for all of them (imports nothing).

One name each for the Optuna user attribute, the Tune result key and the MLflow tag, so the searcher
that writes a trial (:mod:`lorsp.searcher`), the callback that records it in MLflow
(:mod:`lorsp.tracking.callback`), the readers (:func:`lorsp.search.record_of`, :mod:`lorsp.layout`,
:mod:`lorsp.export`) and the trial itself (:mod:`lorsp.trial`) cannot drift apart. A leaf module on
purpose: a trial worker or the MLflow store needs these strings without importing Optuna
(:mod:`lorsp.search` re-exports them for its older importers).
"""

from __future__ import annotations

# User attributes of every Optuna trial (written by lorsp.searcher); TUNE_TRIAL_ID and CHECKPOINT
# are also the Tune result keys and the MLflow tags of the trial's run.
TUNE_TRIAL_ID = "tune_trial_id"
EPOCHS_DONE = "epochs_done"
CHECKPOINT = "checkpoint_path"
ERROR = "error"
INTERRUPTIONS = "interruptions"
METRICS_PREFIX = "metric:"
"""Prefix of the attribute holding a metric a trial reported last (`metric:test_acc`)."""

STUDY_CONFIG_ATTR = "lorsp_study_config"
"""User attribute of the Optuna study: the study file it was created with (redacted), as JSON."""

TRIAL_KEY = "_lorsp_trial"
"""Key, in a Tune trial's config, of what the trial needs beyond its sampled parameters: its Optuna
trial number and, for a trial resumed after an interruption, the checkpoint to continue from."""
