"""`python -m lorsp.tune`: a multi-objective search of prompts on Ray Tune with Optuna.

One process drives the study: it starts (or attaches to) Ray, opens the Optuna study in its RDB
storage, and runs a Ray Tune experiment whose searcher asks that study for each trial. What runs
inside a trial (inline, or a Ray Train run under DDP) is :mod:`lorsp.trial`.

How trials end (:mod:`lorsp.outcome`): a failure of the training itself (a NaN loss, data or
settings the worker refuses) is deterministic, so the trial reports it once and is recorded FAIL
without a retry; only a lost process or node is retried, from the last checkpoint. Ctrl-C or
SIGTERM stops the study cleanly: running trials go back to the Optuna queue with their last
checkpoint, and ``--resume`` finishes them under the same trial numbers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from lorsp.children import STOP_SIGNALS, Stopped
from lorsp.config import ConfigError, StudyConfig, load_study
from lorsp.errors import DataError
from lorsp.layout import ray_folder, trial_folder
from lorsp.pareto import TrialRecord
from lorsp.ray_session import (
    QUIET_TUNE_CONSOLE,
    init_ray,
    shutdown_ray,
    tune_environment,
)
from lorsp.trial import TRIAL_RETRIES, load_data, trainable
from lorsp.uris import redact, redact_arg, with_hint

# Ray imports are deferred to the functions that need them so `--help` and config errors are instant.


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


class Interruption:
    """Ctrl-C, SIGTERM and SIGHUP as a clean stop of the study rather than a dead driver.

    While armed (the Tune loop runs) the first signal only asks Tune to stop: :meth:`stopper` tells
    it to end every trial, and the driver then puts the unfinished trials back in the Optuna queue.
    A second signal, or one outside the loop, raises :class:`lorsp.children.Stopped` (a
    KeyboardInterrupt) at once: the two-stage form of :func:`lorsp.children.stop_signals`, which
    every other command uses, because only a Tune loop has a gentler first stop to offer. Tune's own SIGINT
    handler is switched off: it would print a `Tuner.restore(...)` hint, which is not how a lorsp
    study resumes.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.armed = False
        self._previous: dict[int, Any] = {}
        self._sigint_setting: str | None = None

    def __enter__(self) -> Interruption:
        self._sigint_setting = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
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
        if self._sigint_setting is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._sigint_setting

    def _handle(self, sig: int, frame: Any) -> None:
        first = self.signal is None
        self.signal = sig if first else self.signal
        if self.armed and first:
            print(f"\n{signal.Signals(sig).name}: stopping the study; running trials keep their last checkpoint "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)
            return
        raise Stopped(self.signal)  # lorsp.children's stop, as every other lorsp command raises it

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


SEARCH_DEFAULTS = {
    **QUIET_TUNE_CONSOLE,
    # Tune snapshots the experiment every `num_to_keep` checkpoints and warns when that happens
    # within 5 s; a quickstart epoch takes a second, and the snapshot is a small local copy.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
SEARCH_FORCED = {
    # A failed trial reports only its error, without the scheduler's metric: that is not a bug.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


def run_study(
    study: StudyConfig,
    *,
    storage: str | None = None,
    resume: bool = False,
    address: str | None = None,
    callbacks: list[Any] | Callable[[], list[Any]] | None = None,
    interruption: Interruption | None = None,
    log: Callable[[str], None] = print,
    finish: Callable[[StudyRun], Any] | None = None,
) -> StudyRun:
    """Run (or continue) the search; every trial of the study, Pareto-ranked, and how this run ended.

    The driver first takes the study's lease (:mod:`lorsp.lease`): a second driver on the same study
    is refused. Everything that can refuse the study (the space, the stored study, the data, the
    cluster's resources) is checked before anything is written, so a refused study leaves no stub;
    `callbacks` may be a function, called only then (the MLflow callback creates the parent run).

    Whatever stops the driver (a signal, an exception), no trial stays RUNNING: the Optuna trials
    it had started go back to WAITING with their last checkpoint, and the MLflow callbacks close
    their runs, so ``--resume`` can finish them.

    `finish` (e.g. recording the front in MLflow) runs on a study that ran to its end, still under
    the lease: a second driver started as the search ends must not write to the study before the
    first has recorded it.
    """
    from lorsp.lease import StudyLease
    from lorsp.search import ConditionalSpace, engine_kwargs, rdb_storage, storage_uri

    uri = storage_uri(study, storage)
    optuna_storage = rdb_storage(uri)
    ConditionalSpace(study)  # a bad space fails here, before anything else
    with StudyLease(uri, study.name, engine_kwargs(uri)) as lease:
        if lease.took_over is not None:
            log(f"study '{study.name}': taking over from {lease.took_over.describe(time.time())}, which is gone")
        run = _run_leased(study, optuna_storage, uri, resume=resume, address=address, callbacks=callbacks,
                          interruption=interruption or Interruption(), log=log)
        if finish is not None and not run.stopped:
            finish(run)
        return run


def _run_leased(study: StudyConfig, optuna_storage: Any, uri: str, *, resume: bool, address: str | None,
                callbacks: list[Any] | Callable[[], list[Any]] | None, interruption: Interruption,
                log: Callable[[str], None]) -> StudyRun:
    import ray
    from ray import tune

    from lorsp.capacity import autoscaler_node_types, check_fits, live_nodes
    from lorsp.progress import ProgressCallback
    from lorsp.search import (
        check_study,
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
    storage_path = str(ray_folder(study))
    progress = ProgressCallback(study, total=todo)
    inline = not study.resources.uses_ray_train
    callbacks = [searcher.checkpoint_callback(), progress, *extra]
    launcher = "in the trial process" if inline else f"Ray Train, {study.resources.workers_per_trial} worker(s) each"
    objectives = ", ".join(f"{o.mode} {o.metric}" for o in study.objectives)
    log(f"study '{study.name}': {todo} trials, {study.search.max_concurrent} at a time ({launcher}), "
        f"sampler {study.search.sampler}, objectives {objectives}; storage {redact(uri)}")
    with tune_environment(SEARCH_DEFAULTS, SEARCH_FORCED):  # only while Tune runs: see tune_environment
        tuner = tune.Tuner(
            trainable(study, splits_ref, storage_path, streaming=streaming),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(study), num_samples=todo,
                                        max_concurrent_trials=study.search.max_concurrent,
                                        reuse_actors=inline,  # keeps torch/timm imported from trial to trial
                                        # the name, not the study (and its URIs): Tune pickles this
                                        trial_dirname_creator=(lambda trial, name=study.name:
                                                               trial_folder(name, trial.trial_id))),
            run_config=tune.RunConfig(name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path,
                                      callbacks=callbacks, verbose=0, stop=interruption.stopper(),
                                      failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
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

            def record(run: StudyRun) -> None:
                finish_study(study, run.records, warned=any(getattr(c, "failure", None) for c in run.callbacks))

            run = run_study(study, storage=args.storage, resume=args.resume, address=args.address,
                            callbacks=lambda: tune_callbacks(study), interruption=interruption, finish=record)
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
    print_pareto_table(study, run.records)
    if run.records and all(r.state == "FAIL" for r in run.records):
        print("error: every trial failed; see the trial errors above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
