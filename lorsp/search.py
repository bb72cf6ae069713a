"""The Optuna side of a study: the conditional search space, the sampler, the persistent study
and its trials.

The Optuna RDB storage is the study's source of truth: it outlives the Ray cluster, so `--resume`
and the Pareto/export tools read it rather than Ray's own experiment folder. A trial's Optuna state
says how it ended (see :mod:`lorsp.outcome`): only COMPLETE trials ran their full budget, so
Optuna's own ``study.best_trials`` is the Pareto front, and an interrupted trial waits (WAITING)
until ``--resume`` asks for it again and finishes it under the same number.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from lorsp.config import ConfigError, SpaceParam, StudyConfig, space_target, stored_study
from lorsp.keys import (  # noqa: F401 (the trial's record keys live in lorsp.keys; re-exported for importers)
    CHECKPOINT,
    EPOCHS_DONE,
    ERROR,
    INTERRUPTIONS,
    METRICS_PREFIX,
    STUDY_CONFIG_ATTR,
    TRIAL_KEY,
    TUNE_TRIAL_ID,
)
from lorsp.layout import default_root, embedded_uri, storage_uri  # noqa: F401 (the study folder's, re-exported)
from lorsp.methods import methods
from lorsp.pareto import TrialRecord, rank_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- the space
def _distribution(knob: SpaceParam) -> BaseDistribution:
    if knob.type == "categorical":
        return CategoricalDistribution(knob.choices)
    if knob.type == "int":
        return IntDistribution(int(knob.low), int(knob.high), log=knob.log, step=int(knob.step or 1))
    return FloatDistribution(knob.low, knob.high, log=knob.log, step=knob.step)


def method_knobs() -> dict[str, tuple[str, ...]]:
    """Prompt settings each method reads, from the methods' declarations (:mod:`lorsp.methods`),
    the one place that says it (plugin methods included)."""
    return {m.name: m.knob_names for m in methods()}


def study_methods(study: StudyConfig) -> list[str]:
    knob = study.space.get("method")
    return list(knob.choices) if knob is not None else [study.prompt.method]


def used_knobs(study: StudyConfig, method: str) -> list[str]:
    """The space knobs a trial of `method` samples: every train/data knob, and the prompt knobs
    the method reads. A knob the method ignores is not sampled, so it neither costs the sampler a
    dimension nor shows up as a parameter the trial never used."""
    owned = method_knobs()[method]
    out = []
    for name in study.space:
        if name == "method":
            continue
        section, field = space_target(name)
        if section != "prompt" or field in owned:
            out.append(name)
    return out


def check_space(study: StudyConfig) -> None:
    """Refuse a space that cannot be searched, before Ray starts: an empty one, or a `per_method`
    range for a method that does not read the knob (it would never be used)."""
    if not study.space:
        raise ConfigError("space: is empty; a search needs at least one knob (see search_spaces/quickstart.yaml)")
    owned = method_knobs()
    for name, knob in study.space.items():
        section, field = space_target(name)
        for method in knob.per_method:
            if section == "prompt" and field not in owned[method]:
                reads = ", ".join(owned[method]) or "no prompt knob"
                raise ConfigError(f"space.{name}.per_method.{method}: {method} does not read {name} "
                                  f"(it reads {reads}); remove that entry")


PARAM_SEP = "@"
"""Between a knob and a method in the Optuna parameter of a method's own range (`lr@none`)."""


def param_name(study: StudyConfig, knob: str, method: str) -> str:
    """The Optuna parameter under which a trial of `method` samples `knob`: the knob's name, or
    `knob@method` where the knob has a `per_method` range for that method.

    Why a name of its own: Optuna accepts one name with different ranges in different trials, but
    TPE's group decomposition keeps the first range it saw for a name and models every trial's
    values of it together, so the probe's lr would be proposed from (and fitted with) the prompts'
    range. Under its own name each method's range is its own dimension. Everything past Optuna
    (the trial's config, records, MLflow, exports) reads the knob's name: :func:`knob_params`.
    """
    return f"{knob}{PARAM_SEP}{method}" if method in study.space[knob].per_method else knob


def knob_name(param: str) -> str:
    """The knob an Optuna parameter samples (`lr@none` -> `lr`); space keys never contain the separator."""
    return param.split(PARAM_SEP, 1)[0]


def knob_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna parameters named by the knobs they set (`{"lr@none": 0.3}` -> `{"lr": 0.3}`)."""
    return {knob_name(name): value for name, value in params.items()}


def unused_knobs(study: StudyConfig) -> list[str]:
    """Space knobs that no method of this study reads (e.g. the LIF knobs once `--set
    prompt.method=lorvp` pins the method): never sampled, and worth one line to the user."""
    used = {name for m in study_methods(study) for name in used_knobs(study, m)}
    return [name for name in study.space if name != "method" and name not in used]


class ConditionalSpace:
    """Optuna's define-by-run space: the method first, then only the knobs it uses, each from
    that method's range (:func:`param_name`).

    A class rather than a closure because Tune pickles its searcher (and so this) into every
    experiment snapshot.
    """

    def __init__(self, study: StudyConfig) -> None:
        check_space(study)
        self.default_method = study.prompt.method
        self.method = _distribution(study.space["method"]) if "method" in study.space else None
        self.per_method = {
            m: {param_name(study, n, m): _distribution(study.space[n].for_method(m)) for n in used_knobs(study, m)}
            for m in study_methods(study)
        }

    def __call__(self, trial: Any) -> None:
        method = self.default_method
        if self.method is not None:
            method = _suggest(trial, "method", self.method)
        for name, dist in self.per_method[method].items():
            _suggest(trial, name, dist)


def _suggest(trial: Any, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def balanced_cells(study: StudyConfig) -> list[dict[str, Any]]:
    """The cells that share the budget equally: every combination of the `balanced` knobs' choices
    that a trial can have, a knob counting only for the methods that read it.

    `method: [lorsp, lorvp, none]` balanced alone gives three cells; with `lorsp_mode: [pixel,
    factor]` balanced too, lorsp splits into two cells (lorvp and none do not read the mode), so
    each mode of LoRSP gets the budget of a whole method. Empty when no knob is balanced.
    """
    names = [name for name, knob in study.space.items() if knob.balanced]
    if not names:
        return []
    cells: list[dict[str, Any]] = []
    for method in study_methods(study):
        used = {"method"} | set(used_knobs(study, method))
        partial: list[dict[str, Any]] = [{"method": method}] if "method" in names else [{}]
        for name in names:
            if name == "method" or name not in used:
                continue
            partial = [{**cell, name: choice} for cell in partial for choice in study.space[name].choices]
        for cell in partial:
            if cell not in cells:
                cells.append(cell)
    return cells


def next_balanced_cell(found: optuna.Study, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The cell with the fewest trials so far (the first such in order): every trial counts,
    failed and stopped ones included, because each spent a share of the budget."""

    def params(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return knob_params({**t.system_attrs.get("fixed_params", {}), **t.params})

    trials = [params(t) for t in found.get_trials(deepcopy=False)]
    counts = [sum(all(p.get(k) == v for k, v in cell.items()) for p in trials) for cell in cells]
    return cells[min(range(len(cells)), key=lambda i: (counts[i], i))]


# ---------------------------------------------------------------- the stored study
class StudyStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose pickles carry its URI without the password.

    Ray Tune pickles the searcher, and with it this storage, into the experiment folder
    (`tuner.pkl`, `searcher-state-*.pkl`); a copy made in this process connects as before
    (:func:`lorsp.uris.remember`).
    """

    def __getstate__(self) -> dict[Any, Any]:
        from lorsp.uris import remember

        return {**super().__getstate__(), "url": remember(self.url)}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        from lorsp.uris import reveal

        super().__setstate__({**state, "url": reveal(state["url"])})


def rdb_storage(uri: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """The Optuna storage at `uri`; a one-line ConfigError when it cannot be opened.

    Two drivers started at the same moment on a new database both create Optuna's tables, and the
    loser's schema check can fail half-way: it tries again (the tables exist by then) before it
    reports the storage as unusable.
    """
    from lorsp.uris import redact, require_secret, scrub

    require_secret(uri, "--storage")
    for attempt in range(attempts):
        try:
            return StudyStorage(uri, heartbeat_interval=None, engine_kwargs=engine_kwargs(uri))
        except Exception as err:  # sqlalchemy raises many kinds; all mean "cannot use this storage"
            if attempt + 1 < attempts:
                time.sleep(1.0 + attempt)
                continue
            reason = scrub(str(err).splitlines()[0], uri)[:200]
            raise ConfigError(f"--storage {redact(uri)}: cannot open the Optuna storage ({reason}); check the URI "
                              "and that the database is up") from None
    raise AssertionError("unreachable")


def engine_kwargs(uri: str) -> dict[str, Any]:
    if uri.startswith("sqlite"):
        # Trials finish concurrently; wait for the lock instead of failing with "database is locked".
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def existing_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def storage_trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's own id of trial `number` of a study: what Optuna's public storage methods take
    (a Study and its trials name trials by number, and keep the storage id to themselves)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def mark_interrupted(storage: optuna.storages.BaseStorage, study_name: str, number: int,
                     checkpoint: str | None = None) -> None:
    """Put trial `number`, which the driver stopped, back in the queue (WAITING), with where it got to.

    Optuna lets a RUNNING trial return to WAITING (only finished trials are frozen), and its next
    ``ask()`` hands the oldest WAITING trial out again with its parameters already set: the resumed
    run is the same trial, under the same number, instead of a FAIL plus a copy.
    """
    trial_id = storage_trial_id(storage, study_name, number)
    attrs = storage.get_trial(trial_id).user_attrs
    storage.set_trial_user_attr(trial_id, INTERRUPTIONS, int(attrs.get(INTERRUPTIONS, 0)) + 1)
    if checkpoint:
        storage.set_trial_user_attr(trial_id, CHECKPOINT, checkpoint)
    storage.set_trial_state_values(trial_id, TrialState.WAITING)


def check_study(study: StudyConfig, storage: optuna.storages.BaseStorage, resume: bool) -> optuna.Study | None:
    """Refuse what cannot go on, writing nothing: the stored study (None for a new one) otherwise.

    Run before the data, Ray and the cluster's resources are checked, and before anything is
    created, so that a refused study leaves no stub behind (see :func:`prepare_study`).
    """
    found = existing_study(storage, study.name)
    if found is None:
        if resume:
            raise ConfigError(f"--resume: no study named '{study.name}' in the storage; drop --resume to start it")
        return None
    if not resume:
        raise ConfigError(
            f"study '{study.name}' already exists in the storage ({len(found.trials)} trials): "
            "pass --resume to continue it, or --name NEW to start another"
        )
    directions = [("max" if d == optuna.study.StudyDirection.MAXIMIZE else "min") for d in found.directions]
    wanted = [o.mode for o in study.objectives]
    if directions != wanted:
        raise ConfigError(f"--resume: stored study '{study.name}' has directions {directions}, the file asks {wanted}")
    return found


def study_counts(study: StudyConfig, found: optuna.Study | None) -> tuple[int, int, int]:
    """(trials finished, trials to resume, trials to run) of a stored study, RUNNING ones counted as
    interrupted (:func:`prepare_study` puts them back in the queue)."""
    if found is None:
        return 0, 0, study.search.num_samples
    trials = found.get_trials(deepcopy=False)
    finished = sum(1 for t in trials if t.state.is_finished())
    waiting = sum(1 for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING))
    return finished, waiting, max(study.search.num_samples - finished, waiting)


def prepare_study(study: StudyConfig, storage: optuna.storages.BaseStorage, resume: bool) -> tuple[int, int, int]:
    """Create or reopen the stored study; return (trials finished, trials waiting to resume, trials to run).

    Trials still RUNNING belong to a driver that died without cleaning up (SIGKILL, a lost head
    node): the caller holds the study's lease (:mod:`lorsp.lease`), so no live driver owns them, and
    they are interrupted too. Trials to run = `num_samples` minus the finished ones, and at least
    every waiting one, so an interrupted trial is always finished.
    """
    found = check_study(study, storage, resume)
    if found is None:
        directions = ["maximize" if o.mode == "max" else "minimize" for o in study.objectives]
        created = optuna.create_study(study_name=study.name, storage=storage, directions=directions)
        # The study file travels with the study, so `lorsp.pareto` / `lorsp.export` need only its name.
        created.set_user_attr(STUDY_CONFIG_ATTR, study.redacted().model_dump_json())  # no password in it
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what its plots and dashboard read
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            created.set_metric_names([o.metric for o in study.objectives])
        return study_counts(study, None)
    for t in found.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        mark_interrupted(storage, study.name, t.number)
    return study_counts(study, found)


def study_history(storage: optuna.storages.BaseStorage, name: str) -> int:
    found = existing_study(storage, name)
    return 0 if found is None else len(found.get_trials(deepcopy=False))


def record_of(t: optuna.trial.FrozenTrial, metric_names: list[str]) -> TrialRecord:
    """A stored trial as the Pareto step, the tables and MLflow read it (typed, no string keys)."""
    values: dict[str, float] = {}
    attrs = t.user_attrs
    values.update({k.removeprefix(METRICS_PREFIX): v for k, v in attrs.items() if k.startswith(METRICS_PREFIX)})
    if t.values is not None:
        values.update(dict(zip(metric_names, t.values)))
    return TrialRecord(
        number=t.number, params=knob_params(t.params), values=values, state=t.state.name,
        epochs_done=int(attrs.get(EPOCHS_DONE, 0) or 0), tune_trial_id=attrs.get(TUNE_TRIAL_ID),
        checkpoint_path=attrs.get(CHECKPOINT), error=attrs.get(ERROR),
        interruptions=int(attrs.get(INTERRUPTIONS, 0) or 0),
    )


def trial_records(study: StudyConfig, storage: optuna.storages.BaseStorage) -> list[TrialRecord]:
    """Every trial of the stored study, Pareto-ranked. Only COMPLETE (full-budget) trials are
    ranked, so rank 0 is exactly Optuna's own ``study.best_trials`` (the tests hold the two equal)."""
    found = existing_study(storage, study.name)
    if found is None:
        raise ConfigError(f"no study named '{study.name}' in the storage; check --name and --storage")
    metric_names = [o.metric for o in study.objectives]
    records = [record_of(t, metric_names) for t in found.get_trials(deepcopy=False)]
    return rank_trials(records, [(o.metric, o.mode) for o in study.objectives])


def stored_config(storage: optuna.storages.BaseStorage, name: str) -> StudyConfig:
    """The study file a stored study was run with (written when the study was created)."""
    found = existing_study(storage, name)
    if found is None:
        raise ConfigError(f"no study named '{name}' in the storage; check --name and --storage")
    raw = found.user_attrs.get(STUDY_CONFIG_ATTR)
    if raw is None:
        raise ConfigError(f"study '{name}' was not created by lorsp.tune (no stored config)")
    return stored_study(raw)


def open_stored_study(name: str, storage: str | None,
                      root: str | None) -> tuple[StudyConfig, optuna.storages.RDBStorage, Path]:
    """(StudyConfig, Optuna storage, root folder) of a study stored by `lorsp.tune`.

    The root is `--root`, else `lorsp-runs`; the Optuna storage is `--storage`, else
    `ROOT/optuna.db`. When the storage is found under the root (or `--root` is given), the returned
    config's `tracking.root` is that root (absolute), so every tool finds the MLflow store and the
    Ray checkpoints beside the Optuna database even when the folder was moved.
    """
    base = Path(root or "lorsp-runs").expanduser().resolve()
    defaulted = storage is None
    if storage is None:
        db = base / "optuna.db"
        if not db.is_file():
            raise ConfigError(f"no Optuna database at {db}; pass --root DIR (the study's tracking.root) "
                              "or --storage URI")
        storage = f"sqlite:///{db}"
    opened = rdb_storage(storage)
    study = stored_config(opened, name)
    if root is not None or defaulted:
        study = study.model_copy(update={"tracking": study.tracking.model_copy(update={"root": str(base)})})
    return study, opened, Path(study.tracking.root).expanduser().resolve()
