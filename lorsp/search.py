"""The Optuna side of a study: search space, sampler, the persistent study and its trials.

The Optuna RDB storage is the study's source of truth: it outlives the Ray cluster, so `--resume`
and the Pareto/export tools read it rather than Ray's own experiment folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from lorsp.config import ConfigError, StudyConfig
from lorsp.pareto import TrialRecord, rank_trials

# Attributes set on every Optuna trial by the searcher when the Tune trial ends.
FULL_BUDGET = "full_budget"
EPOCHS_DONE = "epochs_done"
TUNE_TRIAL_ID = "tune_trial_id"
INTERRUPTED = "interrupted"
METRICS_PREFIX = "metric:"
STUDY_CONFIG_ATTR = "lorsp_study_config"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(study: StudyConfig) -> dict[str, BaseDistribution]:
    """The YAML `space:` as Optuna distributions (Optuna, not Tune, owns the sampling)."""
    out: dict[str, BaseDistribution] = {}
    for name, p in study.space.items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(p.choices)
        elif p.type == "int":
            out[name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    if not out:
        raise ConfigError("space: is empty; a search needs at least one knob (see search_spaces/quickstart.yaml)")
    return out


def create_sampler(study: StudyConfig) -> optuna.samplers.BaseSampler:
    s = study.search
    if s.sampler == "tpe":
        # constant_liar keeps concurrent trials from all sampling the same promising corner.
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, constant_liar=True)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


def default_root(study: StudyConfig) -> Path:
    return Path(study.tracking.root).expanduser().resolve()


def embedded_uri(study: StudyConfig, explicit: str | None, filename: str) -> str:
    """`explicit` when given, else an absolute sqlite file under the study's root (a trial's
    working directory is not the caller's, so a relative path would point elsewhere)."""
    if explicit:
        return explicit
    root = default_root(study)
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / filename}"


def storage_uri(study: StudyConfig, override: str | None = None) -> str:
    """`--storage`, else `tracking.storage`, else sqlite beside the MLflow store."""
    return embedded_uri(study, override or study.tracking.storage, "optuna.db")


def rdb_storage(uri: str) -> optuna.storages.RDBStorage:
    try:
        return optuna.storages.RDBStorage(uri, heartbeat_interval=None, engine_kwargs=_engine_kwargs(uri))
    except Exception as err:  # sqlalchemy raises many kinds; all mean "cannot use this storage"
        reason = str(err).splitlines()[0][:200]
        raise ConfigError(f"--storage {uri}: cannot open the Optuna storage ({reason}); check the URI and that the database is up") from None


def _engine_kwargs(uri: str) -> dict[str, Any]:
    if uri.startswith("sqlite"):
        # Trials finish concurrently; wait for the lock instead of failing with "database is locked".
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def existing_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def prepare_study(study: StudyConfig, storage: optuna.storages.BaseStorage, resume: bool) -> tuple[int, int]:
    """Check the stored study against `--resume`; return (trials already finished, trials to run).

    Trials left RUNNING by an interrupted driver are marked FAIL with `interrupted=True`: they did
    not finish, so they neither count towards `num_samples` nor enter the Pareto set.
    """
    found = existing_study(storage, study.name)
    if found is None:
        if resume:
            raise ConfigError(f"--resume: no study named '{study.name}' in the storage; drop --resume to start it")
        created = optuna.create_study(study_name=study.name, storage=storage,
                                      directions=["maximize" if o.mode == "max" else "minimize" for o in study.objectives])
        # The study file travels with the study, so `lorsp.pareto` / `lorsp.export` need only its name.
        created.set_user_attr(STUDY_CONFIG_ATTR, study.model_dump_json())
        return 0, study.search.num_samples
    if not resume:
        raise ConfigError(
            f"study '{study.name}' already exists in the storage ({len(found.trials)} trials): "
            "pass --resume to continue it, or --name NEW to start another"
        )
    directions = [("max" if d == optuna.study.StudyDirection.MAXIMIZE else "min") for d in found.directions]
    wanted = [o.mode for o in study.objectives]
    if directions != wanted:
        raise ConfigError(f"--resume: stored study '{study.name}' has directions {directions}, the file asks {wanted}")
    for t in found.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    done = sum(1 for t in found.get_trials(deepcopy=False) if not t.user_attrs.get(INTERRUPTED))
    return done, max(0, study.search.num_samples - done)


def trial_records(study: StudyConfig, storage: optuna.storages.BaseStorage) -> list[TrialRecord]:
    """Every trial of the stored study, ranked: Pareto rank only for full-budget complete ones."""
    found = existing_study(storage, study.name)
    if found is None:
        raise ConfigError(f"no study named '{study.name}' in the storage; check --name and --storage")
    records = []
    metric_names = [o.metric for o in study.objectives]
    for t in found.get_trials(deepcopy=False):
        values: dict[str, float] = {}
        if t.values is not None:
            values.update(dict(zip(metric_names, t.values)))
        values.update({k.removeprefix(METRICS_PREFIX): v for k, v in t.user_attrs.items() if k.startswith(METRICS_PREFIX)})
        records.append(TrialRecord(
            number=t.number, params=dict(t.params), values=values, state=t.state.name,
            full_budget=bool(t.user_attrs.get(FULL_BUDGET, False)),
            attrs={k: v for k, v in t.user_attrs.items() if not k.startswith(METRICS_PREFIX)},
        ))
    return rank_trials(records, [(o.metric, o.mode) for o in study.objectives])


def stored_config(storage: optuna.storages.BaseStorage, name: str) -> StudyConfig:
    """The study file a stored study was run with (written when the study was created)."""
    found = existing_study(storage, name)
    if found is None:
        raise ConfigError(f"no study named '{name}' in the storage; check --name and --storage")
    raw = found.user_attrs.get(STUDY_CONFIG_ATTR)
    if raw is None:
        raise ConfigError(f"study '{name}' was not created by lorsp.tune (no stored config)")
    return StudyConfig.model_validate_json(raw)
