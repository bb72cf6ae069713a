"""`python -m lorsp.tune`: a multi-objective search where every trial is a Ray Train run.

One process drives the study: it starts (or attaches to) Ray, opens the Optuna study in its RDB
storage, and runs a Ray Tune experiment whose searcher is OptunaSearch. A trial runs
:func:`lorsp.train.train_loop` unchanged, in one of two ways (`resources.launcher`): inline, in the
Tune trial process, which Tune reuses from trial to trial (one worker; the default); or as a Ray
Train run, a light Tune driver that fits a `TorchTrainer` whose workers train under DDP.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from lorsp.config import ConfigError, StudyConfig, load_study
from lorsp.data import DataError
from lorsp.pareto import TrialRecord

HEAD_NODE_RESOURCE = "node:__internal_head__"
"""Only the head node has it: trial drivers (and so their Ray Train controllers) stay there, and a
lost worker node costs only the training workers, which resume from their checkpoint."""
TRIAL_RETRIES = 2

OPTUNA_TRIAL_KEY = "_optuna_trial"
"""Key of the Optuna trial number in a Tune trial's config; stripped before the config is applied."""

# Ray imports are deferred to the functions that need them so `--help` and config errors are instant.


# ---------------------------------------------------------------- the training inside a trial
def _trial_study(study_json: str, params: dict[str, Any] | None = None) -> StudyConfig:
    """The trial's resolved study, with torch threads taken from its CPU allocation."""
    study = StudyConfig.model_validate_json(study_json)
    if params:
        study = study.with_params({k: v for k, v in params.items() if k != OPTUNA_TRIAL_KEY})
    if study.train.threads is None:
        # One trial must not oversubscribe the cores that Ray gave to its neighbours.
        study.train.threads = max(1, int(study.resources.cpus_per_worker))
    return study


def _train(study: StudyConfig, splits_ref: list[Any], ray_lib: Any) -> str | None:
    """Run :func:`lorsp.train.train_loop` for either launcher; return the divergence message, if any.

    `ray_lib` is `ray.train` (in a Ray Train worker) or `ray.tune` (in an inline trial): both have
    `report`, `Checkpoint` and `get_checkpoint`, the last being where a restarted trial resumes.
    Metrics carry where the trial runs (node, GPU).
    """
    import ray

    from lorsp.train import TrainingDiverged, train_loop

    splits = ray.get(splits_ref[0]) if splits_ref else None
    where = _placement()
    checkpoint = ray_lib.get_checkpoint()

    def forward(metrics: dict[str, float], folder: str | None) -> None:
        ray_lib.report({**metrics, **where}, checkpoint=ray_lib.Checkpoint.from_directory(folder) if folder else None)

    try:
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                train_loop(study, forward, splits=splits, resume_from=folder, verbose=False)
        else:
            train_loop(study, forward, splits=splits, verbose=False)
    except TrainingDiverged as err:
        return str(err)
    return None


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (launcher `ray_train`)."""
    import ray.train

    study = StudyConfig.model_validate_json(config["study"])
    error = _train(study, config["splits"], ray.train)
    if error:
        # Reported rather than raised: Ray Train would restart the worker group, and it would diverge again.
        ray.train.report({"diverged": 1.0, "error": error})


def _placement() -> dict[str, str]:
    """Where this worker runs, reported with its metrics so a trial's node and GPU are on record."""
    import socket

    import ray
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "gpu": gpu}


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

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per stored checkpoint
    study = _trial_study(study_json, params)
    try:
        error = _train(study, splits_ref, ray.tune)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next trial in this process may share the GPU with others
    if error:
        raise RuntimeError(error)


def _ray_train_trial(params: dict[str, Any], study_json: str, splits_ref: Any, storage_path: str) -> None:
    """A trial that fits a Ray Train `TorchTrainer` with the sampled parameters (launcher `ray_train`)."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    study = _trial_study(study_json, params)
    res = study.resources
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"study": study.model_dump_json(), "splits": splits_ref},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
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
    metrics = result.metrics or {}
    if metrics.get("diverged"):
        raise RuntimeError(str(metrics.get("error", "training diverged")))


def _trainable(study: StudyConfig, splits_ref: Any, storage_path: str) -> Any:
    """The Tune trainable for this study's launcher, with the resources its trials ask for."""
    from ray import tune

    res = study.resources
    # Wrapped in a list: a bare ObjectRef parameter would be fetched into every trial driver and then
    # copied into each worker's config; the list keeps it a reference that workers `ray.get` locally.
    if res.uses_ray_train:
        trainable = tune.with_parameters(_ray_train_trial, study_json=study.model_dump_json(),
                                         splits_ref=[splits_ref], storage_path=storage_path)
        # The trial driver only waits on its trainer: it asks for memory, not a CPU that a worker could use.
        return tune.with_resources(trainable, {"cpu": res.driver_cpus, "memory": 256 * 1024**2,
                                               HEAD_NODE_RESOURCE: 0.001})
    trainable = tune.with_parameters(_inline_trial, study_json=study.model_dump_json(), splits_ref=[splits_ref])
    return tune.with_resources(trainable, {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker})


def _checkpoint_path_callback() -> Any:
    """A Tune callback that puts an inline trial's stored checkpoint path into its last result.

    Ray Train trials get `checkpoint_path` in their results from `TuneReportCallback`; Tune keeps an
    inline trial's path on the trial instead. Written into `trial.last_result`, which Tune hands to
    the searcher and the callbacks when the trial ends, it makes both launchers look the same to
    Optuna and MLflow.
    """
    from ray.tune import Callback

    class CheckpointPath(Callback):
        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
            if trial.last_result is not None and checkpoint is not None:
                trial.last_result["checkpoint_path"] = checkpoint.path

    return CheckpointPath()


# ---------------------------------------------------------------- the driver
def _searcher(study: StudyConfig, storage: Any) -> Any:
    """OptunaSearch that also records, per trial, whether it ran its full budget."""
    from ray.tune.search.optuna import OptunaSearch

    from lorsp.search import EPOCHS_DONE, FULL_BUDGET, METRICS_PREFIX, TUNE_TRIAL_ID, create_sampler, distributions

    class BudgetAwareOptunaSearch(OptunaSearch):
        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            if isinstance(params, dict) and trial_id in self._ot_trials:
                ot_trial = self._ot_trials[trial_id]
                ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
                # Carried in the Tune trial's config so callbacks (MLflow) can name the Optuna trial.
                params[OPTUNA_TRIAL_KEY] = ot_trial.number
            return params

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and trial_id not in self._completed_trials:
                result = result or {}
                ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
                ot_trial.set_user_attr(FULL_BUDGET, bool(result.get("finished")) and not error)
                ot_trial.set_user_attr(EPOCHS_DONE, int(result.get("epoch", 0)))
                if result.get("checkpoint_path"):
                    ot_trial.set_user_attr("checkpoint_path", str(result["checkpoint_path"]))
                for key in ("test_acc", "val_acc", "prompt_density", "firing_rate", "prompt_params",
                            "trainable_params", "images_per_s", "loss"):
                    if isinstance(result.get(key), (int, float)):
                        ot_trial.set_user_attr(METRICS_PREFIX + key, float(result[key]))
            # Ray tells Optuna COMPLETE whenever a failed trial had reported anything; a failure is a failure.
            super().on_trial_complete(trial_id, None if error else result, error)

    return BudgetAwareOptunaSearch(
        space=distributions(study), metric=[o.metric for o in study.objectives],
        mode=[o.mode for o in study.objectives], sampler=create_sampler(study),
        study_name=study.name, storage=storage,
    )


def _scheduler(study: StudyConfig) -> Any:
    s = study.search.scheduler
    if s is None or s.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # `epoch`, not `training_iteration`: after a retry the iteration count restarts, the epoch does not.
    return ASHAScheduler(time_attr="epoch", metric=s.metric, mode=s.mode, max_t=study.train.epochs,
                         grace_period=min(s.grace_period, study.train.epochs), reduction_factor=s.reduction_factor)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Attach to a cluster (`--address`, or RAY_ADDRESS as set by `ray job submit`) or start a local one.

    A local Ray gets a pinned GCS port and hands its own address to every worker: Ray Train's
    placement-group cleaner queries the state API without an address, which fails ("multiple active
    Ray instances") when another local Ray runs on the machine, and then finished trials' placement
    groups leak until the next trial waits forever.
    """
    import ray

    if ray.is_initialized():
        return
    env_vars = {"RAY_TRAIN_V2_ENABLED": "1"}
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    local = address is None and not os.environ.get("RAY_ADDRESS")
    pinned = os.environ.get("RAY_GCS_SERVER_PORT")
    if local:
        print("starting an embedded local Ray (pass --address to use a cluster)", flush=True)
        port = _free_port()
        env_vars["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address=address, num_cpus=num_cpus if local else None, logging_level="WARNING",
                 log_to_driver=True, runtime_env={"env_vars": env_vars})
    finally:
        if local:
            if pinned is None:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
            else:
                os.environ["RAY_GCS_SERVER_PORT"] = pinned


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def run_study(
    study: StudyConfig,
    *,
    storage: str | None = None,
    resume: bool = False,
    address: str | None = None,
    callbacks: list[Any] | None = None,
    log: Callable[[str], None] = print,
) -> list[TrialRecord]:
    """Run (or continue) the search and return every trial of the study, Pareto-ranked."""
    import ray
    from ray import tune

    from lorsp.data import load_splits
    from lorsp.progress import ProgressCallback
    from lorsp.search import default_root, prepare_study, rdb_storage, storage_uri, trial_records

    uri = storage_uri(study, storage)
    optuna_storage = rdb_storage(uri)
    done, todo = prepare_study(study, optuna_storage, resume)
    searcher = _searcher(study, optuna_storage)  # builds the space: a bad space fails here, before Ray starts
    if resume:
        log(f"resuming study '{study.name}': {done} trials already finished, {todo} to run")
    if todo == 0:
        log(f"study '{study.name}' already has {done} of {study.search.num_samples} trials")
        return trial_records(study, optuna_storage)

    init_ray(address)
    d = study.data
    tick = time.perf_counter()
    # Decode the data set once here and share it with every trial through the object store.
    splits = load_splits(d.dataset, image_size=d.image_size, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                         seed=d.seed, max_train=d.max_train, root=d.root, image_column=d.image_column,
                         label_column=d.label_column)
    splits_ref = ray.put(splits)
    log(f"data: {splits.source} (train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}) "
        f"loaded in {time.perf_counter() - tick:.1f}s")

    storage_path = str(default_root(study) / "ray")
    # Tune snapshots the experiment every `num_to_keep` checkpoints and warns when that happens
    # within 5 s; a quickstart epoch takes a second, and the snapshot is a small local copy.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    progress = ProgressCallback(study, total=todo)
    inline = not study.resources.uses_ray_train
    tuner = tune.Tuner(
        _trainable(study, splits_ref, storage_path),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(study), num_samples=todo,
                                    max_concurrent_trials=study.search.max_concurrent,
                                    reuse_actors=inline,  # keeps torch/timm imported from trial to trial
                                    trial_dirname_creator=lambda trial: f"{study.name}-{trial.trial_id}"),
        run_config=tune.RunConfig(name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path,
                                  callbacks=[_checkpoint_path_callback(), progress, *(callbacks or [])], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    launcher = "in the trial process" if inline else f"Ray Train, {study.resources.workers_per_trial} worker(s) each"
    log(f"study '{study.name}': {todo} trials, {study.search.max_concurrent} at a time ({launcher}), "
        f"sampler {study.search.sampler}, objectives {', '.join(f'{o.mode} {o.metric}' for o in study.objectives)}; storage {uri}")
    tuner.fit()
    return trial_records(study, optuna_storage)


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
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"search.num_samples={args.num_samples}")
    if args.max_concurrent is not None:
        overrides.append(f"search.max_concurrent={args.max_concurrent}")
    if args.name:
        overrides.append(f"name={args.name}")
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    try:
        study = load_study(args.space, overrides)
        callbacks = _tracking_callbacks(study)
        records = run_study(study, storage=args.storage, resume=args.resume, address=args.address,
                            callbacks=callbacks)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished trials are kept; continue with --resume", file=sys.stderr)
        return 130
    from lorsp.progress import print_pareto_table

    _finish_tracking(study, records)
    print_pareto_table(study, records)
    if records and all(r.state == "FAIL" for r in records):
        print("error: every trial failed; see the trial errors above", file=sys.stderr)
        return 1
    return 0


def _tracking_callbacks(study: StudyConfig) -> list[Any]:
    """MLflow recording, when lorsp.tracking is available (it plugs in as a Tune callback)."""
    try:
        from lorsp.tracking import tune_callbacks
    except ImportError:
        return []
    return tune_callbacks(study)


def _finish_tracking(study: StudyConfig, records: list[TrialRecord]) -> None:
    """Pareto tags, hypervolume and the front plot on the study's MLflow runs, when tracking is available."""
    try:
        from lorsp.tracking import finish_study
    except ImportError:
        return
    finish_study(study, records)


if __name__ == "__main__":
    sys.exit(main())
