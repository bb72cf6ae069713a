"""The trial runtime: what runs inside a Tune trial of a study, apart from the driver that starts them.

A trial runs :func:`lorsp.train.train_loop` unchanged, in one of two ways (`resources.launcher`):
inline, in the Tune trial process, which Tune reuses from trial to trial (one worker; the default);
or as a Ray Train run, a light Tune trial that fits a `TorchTrainer` whose workers train under DDP.
:func:`trainable` is what a driver hands Tune (:mod:`lorsp.tune` for a search, :mod:`lorsp.confirm`
for fixed configurations); :func:`share_data` prepares the data once for all its trials.

A failure of the training itself (a NaN loss, data or settings the worker refuses) is reported once
as the trial's result (:func:`_guarded`, recorded FAIL by :mod:`lorsp.outcome`); only a lost process
or node is raised, for Tune to retry from the last checkpoint (:data:`TRIAL_RETRIES`).

Ray is imported inside the functions that run in a trial, so the driver's `--help` stays instant.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorsp.config import StudyConfig
from lorsp.keys import TRIAL_KEY
from lorsp.layout import trial_folder
from lorsp.outcome import ERROR_KEY, FAILED_KEY, TRACEBACK_KEY

TRIAL_RETRIES = 2
"""Retries of a trial whose process or node was lost (never of a failure of the training itself)."""

JOB_KEY = "job"
"""Config key of a trial's parameters when Tune hands out a fixed list of them (`tune.grid_search`)."""


# ---------------------------------------------------------------- the training inside a trial
def _trial_study(study_json: str, params: dict[str, Any] | None = None) -> StudyConfig:
    """The trial's resolved study, with torch threads taken from its CPU allocation."""
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
    import ray.tune
    import torch

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
            name=trial_folder(study.name, trial_id),
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
