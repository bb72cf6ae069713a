"""MLflow recording of a study: one experiment per study, a parent run, one child run per trial.

The recording runs on the Ray *driver*, as a Ray Tune callback, so workers need neither MLflow nor
network access to the tracking server. The Optuna storage stays the source of truth: when MLflow
fails during a study the callback warns once and stops recording, the study carries on, and
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

The package, one job per module (the flow runs down the list):

* :mod:`~lorsp.tracking.store`: where the store is (:func:`tracking_uri`, :func:`probe_server`),
  :func:`connect` and :class:`Store` (the experiment's runs, params, metrics, artifacts), the tag
  names, and the parent runs a driver closes as KILLED when it exits without finishing.
* :mod:`~lorsp.tracking.callback`: :func:`tune_callbacks` and :class:`MLflowCallback`, the runs
  recorded while the study runs. The only module here that imports Ray; nothing here imports it,
  so import its names from it: reading MLflow (export, confirm, relog) needs no Ray.
* :mod:`~lorsp.tracking.record`: :func:`finish_study` and :func:`record_study`, the end of a study
  reconciled from the Optuna records, with its Pareto front and hypervolume.
* :mod:`~lorsp.tracking.relog`: the ``python -m lorsp.tracking relog`` command.
* :mod:`~lorsp.tracking.files`: a trial's files read back (weights, config, gallery) from its run,
  else from its checkpoint folder, for ``lorsp.export`` and ``lorsp.pareto --gallery``.

Where the study's files are (its root, the embedded store's database, a trial's checkpoint) is
:mod:`lorsp.layout`'s.
"""

from lorsp.tracking.record import finish_study, record_study, ui_command
from lorsp.tracking.relog import main, relog
from lorsp.tracking.store import (
    CHECKPOINT_ARTIFACTS,
    OPTUNA_TRIAL,
    PARENT_ID,
    PROMPT_ARTIFACTS,
    ROLE,
    STUDY,
    TUNE_TRIAL_ID,
    Store,
    artifact_location,
    connect,
    is_server,
    probe_server,
    tracking_uri,
)

__all__ = [
    "CHECKPOINT_ARTIFACTS",
    "OPTUNA_TRIAL",
    "PARENT_ID",
    "PROMPT_ARTIFACTS",
    "ROLE",
    "STUDY",
    "TUNE_TRIAL_ID",
    "Store",
    "artifact_location",
    "connect",
    "finish_study",
    "is_server",
    "main",
    "probe_server",
    "record_study",
    "relog",
    "tracking_uri",
    "ui_command",
]
