"""`python -m lorsp.tune`: a multi-objective search of prompts on Ray Tune with Optuna.

One process drives the study: it starts (or attaches to) Ray, opens the Optuna study in its RDB
storage, and runs a Ray Tune experiment whose searcher asks that study for each trial. A trial runs
:func:`lorsp.train.train_loop` unchanged, in one of two ways (`resources.launcher`): inline, in the
Tune trial process, which Tune reuses from trial to trial (one worker; the default); or as a Ray
Train run, a light Tune driver that fits a `TorchTrainer` whose workers train under DDP.

How trials end (:mod:`lorsp.outcome`): a failure of the training itself (a NaN loss, data or
settings the worker refuses) is deterministic, so the trial reports it once and is recorded FAIL
without a retry; only a lost process or node is retried, from the last checkpoint. Ctrl-C or
SIGTERM stops the study cleanly: running trials go back to the Optuna queue with their last
checkpoint, and ``--resume`` finishes them under the same trial numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorsp.children import STOP_SIGNALS
from lorsp.config import ConfigError, StudyConfig, load_study
from lorsp.errors import DataError
from lorsp.outcome import ERROR_KEY, FAILED_KEY, TRACEBACK_KEY
from lorsp.pareto import TrialRecord
from lorsp.uris import redact, redact_arg, with_hint

TRIAL_RETRIES = 2
"""Retries of a trial whose process or node was lost (never of a failure of the training itself)."""

# Ray imports are deferred to the functions that need them so `--help` and config errors are instant.


# ---------------------------------------------------------------- the training inside a trial
def _trial_study(study_json: str, params: dict[str, Any] | None = None) -> StudyConfig:
    """The trial's resolved study, with torch threads taken from its CPU allocation."""
    from lorsp.search import TRIAL_KEY

    study = StudyConfig.model_validate_json(study_json)
    if params:
        study = study.with_params({k: v for k, v in params.items() if k != TRIAL_KEY})
    if study.train.threads is None:
        # One trial must not oversubscribe the cores that Ray gave to its neighbours.
        study.train.threads = max(1, int(study.resources.cpus_per_worker))
    return study


def _train(study: StudyConfig, splits_ref: list[Any], ray_lib: Any, resume_from: str | None,
           decode: Any | None = None) -> None:
    """Run :func:`lorsp.train.train_loop` for either launcher.

    `ray_lib` is `ray.train` (in a Ray Train worker) or `ray.tune` (in an inline trial): both have
    `report`, `Checkpoint` and `get_checkpoint`. A trial restarted by Ray (lost process) continues
    from `get_checkpoint()`; a trial resumed by ``--resume`` from the checkpoint it had reached when
    the driver stopped. Metrics carry where the trial runs (node, GPU).

    The shared data is decoded :class:`~lorsp.data.Splits` or a :class:`~lorsp.data.StreamPlan`;
    a plan is opened here as Ray Data streams (`decode`: where a Ray Train trial's decode tasks run).
    """
    import ray

    from lorsp.train import train_loop

    splits = ray.get(splits_ref[0]) if splits_ref else None
    if splits is not None and _is_plan(splits):
        splits = _open_stream(study, splits, ray_lib, decode)
    where = _placement()
    checkpoint = ray_lib.get_checkpoint()
    if checkpoint is None and resume_from:
        checkpoint = ray_lib.Checkpoint(resume_from)

    def forward(metrics: dict[str, float], folder: str | None) -> None:
        ray_lib.report({**metrics, **where}, checkpoint=ray_lib.Checkpoint.from_directory(folder) if folder else None)

    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            train_loop(study, forward, splits=splits, resume_from=folder, verbose=False)
    else:
        train_loop(study, forward, splits=splits, verbose=False)


def _is_plan(data: Any) -> bool:
    from lorsp.data import StreamPlan

    return isinstance(data, StreamPlan)


def _open_stream(study: StudyConfig, plan: Any, ray_lib: Any, decode: Any | None) -> Any:
    """A streamed plan as this process's splits: an inline trial iterates its own Ray Datasets, a Ray
    Train worker reads its training shard with `get_dataset_shard` (see :mod:`lorsp.data.stream`)."""
    import ray.train

    from lorsp.data.stream import DecodePlacement, open_inline, open_worker, quiet_ray_data

    quiet_ray_data()
    if ray_lib is ray.train:
        context = ray.train.get_context()
        return open_worker(plan, ray.train.get_dataset_shard("train"), seed=study.train.seed,
                           rank=context.get_world_rank(), world_size=context.get_world_size(), placement=decode)
    return open_inline(plan, seed=study.train.seed, placement=DecodePlacement.current(study.resources.stream_cpus))


def _failure(err: BaseException) -> dict[str, Any]:
    """The one result a failed trial reports: the reason in one line, the traceback for the record.

    A data error raised in another process (a Ray Data decode task) is shown as its own one line
    (the file and row to fix), not as the Ray error that carried it."""
    from lorsp.errors import data_error_in

    shown = data_error_in(err) or err
    line = f"{type(shown).__name__}: {shown}".splitlines()[0][:300] if str(shown) else type(shown).__name__
    return {FAILED_KEY: 1.0, ERROR_KEY: line,
            TRACEBACK_KEY: "".join(traceback.format_exception(err))[-20000:]}


def _guarded(run: Callable[[], None], report: Callable[[dict[str, Any]], None]) -> None:
    """Run a trial's training; a failure of the training itself is reported once, not raised.

    Raised, Tune would retry it and print a traceback per attempt, though a diverged loss, a bad
    setting or a damaged data file fails the same way every time. Ray's own errors (a lost object,
    a dead node) are raised: those are the failures a retry can cure; but not a DataError that a
    Ray task raised and Ray wrapped (a RayTaskError), which is a damaged file like any other.
    """
    from ray.exceptions import RayError

    from lorsp.errors import data_error_in

    try:
        run()
    except Exception as err:
        if isinstance(err, RayError) and data_error_in(err) is None:
            raise
        report(_failure(err))


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (launcher `ray_train`)."""
    import ray.train

    _quiet_reports()
    study = StudyConfig.model_validate_json(config["study"])
    _guarded(lambda: _train(study, config["splits"], ray.train, config.get("resume_from"), config.get("decode")),
             ray.train.report)


def _quiet_reports() -> None:
    """No console line from every worker for every report (a failed trial's would hold its whole
    traceback). Ray Train 2.60 logs them at INFO through a logger named after its module's file path,
    outside `ray.train`, so `LoggingConfig(log_level="WARNING")` does not reach it."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray: its own logging rules apply
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _placement() -> dict[str, str]:
    """Where this worker runs, reported with its metrics so a trial's node and GPU are on record."""
    import socket

    import ray
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "gpu": gpu}


def _write_error_log(result: dict[str, Any]) -> None:
    """The full traceback of a failed trial, as `error.txt` in its Tune trial folder."""
    import ray.tune

    text = result.get(TRACEBACK_KEY)
    if text:
        try:
            Path(ray.tune.get_context().get_trial_dir(), "error.txt").write_text(str(text))
        except OSError:
            pass  # the log is a convenience; the traceback also goes to the trial's MLflow run


# ---------------------------------------------------------------- one Tune trial
def _inline_trial(params: dict[str, Any], study_json: str, splits_ref: Any) -> None:
    """A one-worker trial that trains in the Tune trial process itself (launcher `inline`).

    Tune reuses the process for the next trial, so only the first trial of a process pays for
    starting it and importing torch and timm. Checkpoints go through Tune, which restores the
    latest one when it retries a trial whose process or node died.
    """
    import logging

    import ray.tune
    import torch

    from lorsp.search import TRIAL_KEY

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per stored checkpoint

    def report_failure(result: dict[str, Any]) -> None:
        _write_error_log(result)
        ray.tune.report(result)

    resume_from = (params.get(TRIAL_KEY) or {}).get("resume_from")
    try:
        _guarded(lambda: _train(_trial_study(study_json, params), splits_ref, ray.tune, resume_from), report_failure)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next trial in this process may share the GPU with others


def _stream_inputs(study: StudyConfig, splits_ref: Any) -> dict[str, Any]:
    """A streaming Ray Train trial's training dataset, its `DataConfig` and where its decode tasks run.

    Built in the trial driver, whose placement group's last bundle holds the trial's decode CPUs.
    """
    import ray

    from lorsp.data.stream import DecodePlacement, quiet_ray_data, ray_train_datasets

    quiet_ray_data()
    decode = DecodePlacement.current(study.resources.stream_cpus)
    datasets, dataset_config = ray_train_datasets(ray.get(splits_ref[0]), seed=study.train.seed, placement=decode)
    return {"datasets": datasets, "dataset_config": dataset_config, "decode": decode}


def _ray_train_trial(params: dict[str, Any], study_json: str, splits_ref: Any, storage_path: str,
                     streaming: bool = False) -> None:
    """A trial that fits a Ray Train `TorchTrainer` with the sampled parameters (launcher `ray_train`)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from lorsp.search import TRIAL_KEY

    study = _trial_study(study_json, params)
    res = study.resources
    trial_id = ray.tune.get_context().get_trial_id()
    stream = _stream_inputs(study, splits_ref) if streaming else {}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"study": study.model_dump_json(), "splits": splits_ref,
                           "resume_from": (params.get(TRIAL_KEY) or {}).get("resume_from"),
                           "decode": stream.get("decode")},
        datasets=stream.get("datasets"),
        dataset_config=stream.get("dataset_config"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker,
                                  **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            name=f"{study.name}-{trial_id}",
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=2),  # a lost worker resumes from its checkpoint
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # no per-report chatter
        ),
    )
    result = trainer.fit()
    _write_error_log(result.metrics or {})


def _inline_job(config: dict[str, Any], **kwargs: Any) -> None:
    _inline_trial(config[JOB_KEY], **kwargs)


def _ray_train_job(config: dict[str, Any], **kwargs: Any) -> None:
    _ray_train_trial(config[JOB_KEY], **kwargs)


JOB_KEY = "job"
"""Config key of a trial's parameters when Tune hands out a fixed list of them (`tune.grid_search`)."""


def _trial_resources(study: StudyConfig, streaming: bool) -> Any:
    """What one trial asks Tune for; a streaming trial adds a last bundle of `stream_cpus` for decoding.

    That bundle is what keeps Ray Data and the trials from oversubscribing a node: Tune starts a
    trial only when its decode CPUs are free too, and its decode tasks run inside them
    (:class:`lorsp.data.stream.DecodePlacement`).
    """
    from ray import tune

    from lorsp.capacity import tune_bundles

    bundles = tune_bundles(study.resources, streaming)
    if not streaming:
        return {k.lower() if k in ("CPU", "GPU") else k: v for k, v in bundles[0].items()}
    return tune.PlacementGroupFactory(bundles)


def trainable(study: StudyConfig, splits_ref: Any, storage_path: str, jobs: bool = False,
              streaming: bool = False) -> Any:
    """The Tune trainable for this study's launcher, with the resources its trials ask for.

    `jobs`: the trial's parameters come under :data:`JOB_KEY` (a grid of fixed configurations, as
    `lorsp.confirm` runs) rather than from a searcher. `streaming`: `splits_ref` holds a
    :class:`~lorsp.data.StreamPlan` rather than decoded splits (see :func:`share_data`).
    """
    from ray import tune

    res = study.resources
    study = study.redacted()  # a trial never connects to the stores: it gets no password
    # Wrapped in a list: a bare ObjectRef parameter would be fetched into every trial driver and then
    # copied into each worker's config; the list keeps it a reference that workers `ray.get` locally.
    if res.uses_ray_train:
        trainable = tune.with_parameters(_ray_train_job if jobs else _ray_train_trial,
                                         study_json=study.model_dump_json(), splits_ref=[splits_ref],
                                         storage_path=storage_path, streaming=streaming)
    else:
        trainable = tune.with_parameters(_inline_job if jobs else _inline_trial, study_json=study.model_dump_json(),
                                         splits_ref=[splits_ref])
    return tune.with_resources(trainable, _trial_resources(study, streaming))


def load_data(study: StudyConfig, log: Callable[[str], None] = print) -> tuple[Any, bool]:
    """The study's data, prepared once on the driver; no Ray needed, so a data error stops a study
    before Ray starts or anything is written.

    In memory (:func:`lorsp.data.load_splits_for`: decoded once, shared by all trials), or, as
    `data.stream` decides (:func:`lorsp.data.mode.choose_mode`, which says why in one line), a
    :class:`~lorsp.data.StreamPlan` (rows and splits, nothing decoded) from which each trial streams.
    Returns the data and whether it is a plan.
    """
    from lorsp.data import load_splits_for
    from lorsp.data.mode import choose_mode

    tick = time.perf_counter()
    mode = choose_mode(study.data)
    if mode.line:
        log(mode.line)
    if mode.plan is not None:
        plan = mode.plan
        log(f"data: {plan.summary()}; listed in {time.perf_counter() - tick:.1f}s, decoded by each trial "
            f"on {study.resources.stream_cpus:g} CPUs of its own (resources.stream_cpus)")
        return plan, True
    splits = load_splits_for(study.data)
    log(f"data: {splits.source} (train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}) "
        f"loaded in {time.perf_counter() - tick:.1f}s")
    return splits, False


def share_data(study: StudyConfig, log: Callable[[str], None] = print) -> tuple[Any, bool]:
    """:func:`load_data`, put in the object store once for every trial: (the reference, whether it is a plan)."""
    import ray

    data, streaming = load_data(study, log)
    return ray.put(data), streaming


# ---------------------------------------------------------------- the driver
def _searcher(study: StudyConfig, storage: Any, history: int) -> Any:
    """The Tune searcher that asks the study's Optuna storage for each trial (see :mod:`lorsp.searcher`)."""
    from lorsp.searcher import StudySearcher

    return StudySearcher(study, storage, history)


def _scheduler(study: StudyConfig) -> Any:
    s = study.search.scheduler
    if s is None or s.type == "none":
        return None
    if s.type == "pareto_asha":
        from lorsp.schedulers import ParetoASHA

        return ParetoASHA.for_study(study)
    from ray.tune.schedulers import ASHAScheduler

    # `epoch`, not `training_iteration`: after a retry the iteration count restarts, the epoch does not.
    return ASHAScheduler(time_attr="epoch", metric=s.metric, mode=s.mode, max_t=study.train.epochs,
                         grace_period=min(s.grace_period, study.train.epochs), reduction_factor=s.reduction_factor)


_EMBEDDED: list[Any] = []
"""The embedded head this process started (:mod:`lorsp.embedded_ray`), ended by :func:`shutdown_ray`."""


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Attach to a cluster (`--address`, or RAY_ADDRESS as set by `ray job submit`) or start a local one.

    A local Ray is an embedded head in a session of its own (:mod:`lorsp.embedded_ray`), so that a
    signal to the driver's process group stops the study cleanly instead of killing the head under
    it; :func:`shutdown_ray` ends it. Its address goes to every worker: Ray Train's placement-group
    cleaner queries the state API without an address, which fails ("multiple active Ray instances")
    when another local Ray runs on the machine, and then finished trials' placement groups leak until
    the next trial waits forever.
    """
    import atexit

    import ray

    if ray.is_initialized():
        return
    env_vars = {"RAY_TRAIN_V2_ENABLED": "1"}
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        from lorsp import embedded_ray

        print("starting an embedded local Ray (pass --address to use a cluster)", flush=True)
        # A local Ray makes its own auth token; its notice about token authentication is not news here.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        head = embedded_ray.start(num_cpus)
        _EMBEDDED.append(head)
        atexit.register(shutdown_ray)
        address = env_vars["RAY_ADDRESS"] = head.address
        embedded_ray.attach_with_token_auth()
    ray.init(address=address, logging_level="WARNING", log_to_driver=True, runtime_env={"env_vars": env_vars})


def shutdown_ray() -> None:
    """Disconnect from Ray and end the embedded head, if this process started one."""
    import ray

    ray.shutdown()
    while _EMBEDDED:
        _EMBEDDED.pop().stop()


def quiet_tune_console() -> None:
    """lorsp prints its own line per trial: Tune's new-style console output (a configuration box, a
    TensorBoard hint) and its "slow callback" warnings for an MLflow call on a loaded machine would
    bury those lines; the legacy reporter honours verbose=0. Call before building a Tuner."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "10")


class Interruption:
    """Ctrl-C, SIGTERM and SIGHUP as a clean stop of the study rather than a dead driver.

    While armed (the Tune loop runs) the first signal only asks Tune to stop: :meth:`stopper` tells
    it to end every trial, and the driver then puts the unfinished trials back in the Optuna queue.
    A second signal, or one outside the loop, raises KeyboardInterrupt at once. Tune's own SIGINT
    handler is switched off: it would print a `Tuner.restore(...)` hint, which is not how a lorsp
    study resumes.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interruption:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def arm(self) -> None:
        """Catch the signals from here on (again: starting Ray installs its own SIGTERM handler,
        which aborts the driver) and let the first one stop the Tune loop cleanly."""
        if self._previous:
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._handle)
        self.armed = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, sig: int, frame: Any) -> None:
        first = self.signal is None
        self.signal = sig if first else self.signal
        if self.armed and first:
            print(f"\n{signal.Signals(sig).name}: stopping the study; running trials keep their last checkpoint "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal or signal.SIGINT)

    def stopper(self) -> Any:
        from ray.tune import Stopper

        interruption = self

        class StopOnSignal(Stopper):
            def __call__(self, trial_id: str, result: dict) -> bool:
                return False

            def stop_all(self) -> bool:
                return interruption.signal is not None

        return StopOnSignal()


class StudyRun:
    """What :func:`run_study` returns: every trial of the study, whether this run was cut short, and
    the Tune callbacks it ran with (the MLflow callback says whether it had to warn)."""

    def __init__(self, records: list[TrialRecord], interrupted: int = 0, stopped: bool = False,
                 callbacks: list[Any] | None = None) -> None:
        self.records = records
        self.interrupted = interrupted
        self.stopped = stopped
        self.callbacks = callbacks or []


def run_study(
    study: StudyConfig,
    *,
    storage: str | None = None,
    resume: bool = False,
    address: str | None = None,
    callbacks: list[Any] | Callable[[], list[Any]] | None = None,
    interruption: Interruption | None = None,
    log: Callable[[str], None] = print,
) -> StudyRun:
    """Run (or continue) the search; every trial of the study, Pareto-ranked, and how this run ended.

    The driver first takes the study's lease (:mod:`lorsp.lease`): a second driver on the same study
    is refused. Everything that can refuse the study (the space, the stored study, the data, the
    cluster's resources) is checked before anything is written, so a refused study leaves no stub;
    `callbacks` may be a function, called only then (the MLflow callback creates the parent run).

    Whatever stops the driver (a signal, an exception), no trial stays RUNNING: the Optuna trials
    it had started go back to WAITING with their last checkpoint, and the MLflow callbacks close
    their runs, so ``--resume`` can finish them.
    """
    from lorsp.lease import StudyLease
    from lorsp.search import ConditionalSpace, engine_kwargs, rdb_storage, storage_uri

    uri = storage_uri(study, storage)
    optuna_storage = rdb_storage(uri)
    ConditionalSpace(study)  # a bad space fails here, before anything else
    with StudyLease(uri, study.name, engine_kwargs(uri)) as lease:
        if lease.took_over is not None:
            log(f"study '{study.name}': taking over from {lease.took_over.describe(time.time())}, which is gone")
        return _run_leased(study, optuna_storage, uri, resume=resume, address=address, callbacks=callbacks,
                           interruption=interruption or Interruption(), log=log)


def _run_leased(study: StudyConfig, optuna_storage: Any, uri: str, *, resume: bool, address: str | None,
                callbacks: list[Any] | Callable[[], list[Any]] | None, interruption: Interruption,
                log: Callable[[str], None]) -> StudyRun:
    import ray
    from ray import tune

    from lorsp.capacity import autoscaler_node_types, check_fits, live_nodes
    from lorsp.progress import ProgressCallback
    from lorsp.search import (
        check_study,
        default_root,
        prepare_study,
        study_counts,
        study_history,
        study_methods,
        trial_records,
        unused_knobs,
    )

    finished, waiting, todo = study_counts(study, check_study(study, optuna_storage, resume))
    if unused_knobs(study):
        log(f"space: {', '.join(unused_knobs(study))} not searched: no method of this study "
            f"({', '.join(study_methods(study))}) reads them")
    if resume:
        log(f"resuming study '{study.name}': {finished} trials finished, {waiting} interrupted to resume, "
            f"{todo - waiting} new to run")
    if todo == 0:
        log(f"study '{study.name}' already has {finished} of {study.search.num_samples} trials")
        return StudyRun(trial_records(study, optuna_storage))

    data, streaming = load_data(study, log)
    init_ray(address)
    check_fits(study.resources, streaming, live_nodes(), autoscaler_node_types())
    splits_ref = ray.put(data)
    del data

    # Nothing was written before this point: from here on the study exists (MLflow's parent run first:
    # a tracking store that refuses then costs no Optuna study).
    extra = callbacks() if callable(callbacks) else list(callbacks or [])
    history = study_history(optuna_storage, study.name)
    prepare_study(study, optuna_storage, resume)
    searcher = _searcher(study, optuna_storage, history)
    storage_path = str(default_root(study) / "ray")
    # Tune snapshots the experiment every `num_to_keep` checkpoints and warns when that happens
    # within 5 s; a quickstart epoch takes a second, and the snapshot is a small local copy.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A failed trial reports only its error, without the scheduler's metric: that is not a bug.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    quiet_tune_console()
    progress = ProgressCallback(study, total=todo)
    inline = not study.resources.uses_ray_train
    callbacks = [searcher.checkpoint_callback(), progress, *extra]
    tuner = tune.Tuner(
        trainable(study, splits_ref, storage_path, streaming=streaming),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(study), num_samples=todo,
                                    max_concurrent_trials=study.search.max_concurrent,
                                    reuse_actors=inline,  # keeps torch/timm imported from trial to trial
                                    # the name, not the study (and its URIs): Tune pickles this
                                    trial_dirname_creator=lambda trial, name=study.name: f"{name}-{trial.trial_id}"),
        run_config=tune.RunConfig(name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path,
                                  callbacks=callbacks, verbose=0, stop=interruption.stopper(),
                                  failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    launcher = "in the trial process" if inline else f"Ray Train, {study.resources.workers_per_trial} worker(s) each"
    objectives = ", ".join(f"{o.mode} {o.metric}" for o in study.objectives)
    log(f"study '{study.name}': {todo} trials, {study.search.max_concurrent} at a time ({launcher}), "
        f"sampler {study.search.sampler}, objectives {objectives}; storage {redact(uri)}")
    interruption.arm()
    try:
        tuner.fit()
    except BaseException:
        _stop_unfinished(searcher, callbacks, "the driver stopped with an error")
        raise
    finally:
        interruption.armed = False
    interrupted = _stop_unfinished(searcher, callbacks, "interrupted" if interruption.signal else "the study ended")
    return StudyRun(trial_records(study, optuna_storage), interrupted=interrupted,
                    stopped=interruption.signal is not None, callbacks=extra)


def _stop_unfinished(searcher: Any, callbacks: list[Any], reason: str) -> int:
    """Put the trials this driver started but did not finish back in the queue; close their runs."""
    count = 0
    try:
        count = searcher.interrupt_unfinished()
    finally:
        for callback in callbacks:
            close = getattr(callback, "close_unfinished", None)
            if close is not None:
                close(reason)
    return count


def resume_command(argv: list[str]) -> str:
    """The command that continues this study: the same arguments plus --resume, with the password of
    any URI in them shown as *** and a shell comment saying how to give it (:func:`lorsp.uris.with_hint`)."""
    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    shown = [redact_arg(a) for a in args]
    return with_hint(shlex.join(["python", "-m", "lorsp.tune", *shown]), *[a for a, b in zip(args, shown) if a != b])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, help="study YAML, e.g. search_spaces/quickstart.yaml")
    parser.add_argument("--num-samples", type=int, help="total trials of the study (overrides search.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at a time (overrides search.max_concurrent)")
    parser.add_argument("--name", help="study name = MLflow experiment = Optuna study (overrides name)")
    parser.add_argument("--storage", help="Optuna RDB URI (default sqlite under tracking.root)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite under tracking.root)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the study file (repeatable)")
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw_argv)
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"search.num_samples={args.num_samples}")
    if args.max_concurrent is not None:
        overrides.append(f"search.max_concurrent={args.max_concurrent}")
    if args.name:
        overrides.append(f"name={args.name}")
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    with Interruption() as interruption:
        try:
            study = load_study(args.space, overrides)
            from lorsp.tracking import finish_study, is_server, probe_server, tracking_uri
            from lorsp.tracking.callback import tune_callbacks

            if is_server(tracking_uri(study)):
                probe_server(tracking_uri(study))  # a dead server is one line in seconds, before Ray starts

            run = run_study(study, storage=args.storage, resume=args.resume, address=args.address,
                            callbacks=lambda: tune_callbacks(study), interruption=interruption)
        except (ConfigError, DataError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"interrupted: no trial was lost; continue with: {resume_command(raw_argv)}", file=sys.stderr)
            return interruption.exit_code
        finally:
            shutdown_ray()  # ends the embedded head, if this driver started one
    from lorsp.progress import print_pareto_table

    if run.stopped:
        print_pareto_table(study, run.records)
        print(f"interrupted: {run.interrupted} running trial(s) keep their last checkpoint; continue with: "
              f"{resume_command(raw_argv)}", file=sys.stderr)
        return interruption.exit_code
    finish_study(study, run.records, warned=any(getattr(c, "failure", None) for c in run.callbacks))
    print_pareto_table(study, run.records)
    if run.records and all(r.state == "FAIL" for r in run.records):
        print("error: every trial failed; see the trial errors above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
