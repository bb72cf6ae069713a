"""Timestamps from inside Ray trial and Train worker processes, for ``benchmarks/trials.py``.

Nothing in ``lorsp`` is edited: ``trials.py`` swaps ``lorsp.tune._trial`` (looked up by
``run_study`` when it builds the trainable) for :func:`traced_trial`, which logs and then calls
the original; in the trial process it swaps ``lorsp.tune._worker_loop`` for
:func:`traced_worker_loop` before the original builds its ``TorchTrainer``, and that one wraps
``train_loop``, ``build_model`` and the first training batch before calling the original worker
loop. Every event is one JSON line ``{trial, event, t}`` (wall clock, same machine) appended to
the file named by ``LORSP_TRACE_FILE``. This module must be importable in Ray's worker processes:
``trials.py`` puts the ``benchmarks`` folder on their ``PYTHONPATH``.

:func:`direct_trial` is the measured alternative for one-worker trials: the same
``train_loop`` run inside the Tune trial process (no Train controller, worker group or process
group), reporting through ``ray.tune.report``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import lorsp.tune as _tune

TRACE_ENV = "LORSP_TRACE_FILE"
_ORIGINAL_TRIAL = _tune._trial
_ORIGINAL_WORKER_LOOP = _tune._worker_loop


def process_start_time() -> float:
    """Wall-clock time at which this process was created (Linux /proc; 10 ms resolution)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def log(trial: str, event: str, t: float | None = None, **extra: Any) -> None:
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    record = {"trial": trial, "event": event, "t": time.time() if t is None else t, "pid": os.getpid(), **extra}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _patch_fit(trial_id: str) -> None:
    from ray.train.torch import TorchTrainer

    original = getattr(TorchTrainer.fit, "__wrapped_fit__", TorchTrainer.fit)

    def fit(self: Any) -> Any:
        log(trial_id, "fit_start")
        try:
            return original(self)
        finally:
            log(trial_id, "fit_end")

    fit.__wrapped_fit__ = original  # type: ignore[attr-defined]
    TorchTrainer.fit = fit  # type: ignore[method-assign]


def traced_trial(params: dict[str, Any], **kwargs: Any) -> None:
    """``lorsp.tune._trial`` with timestamps (runs in the Tune trial process)."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    log(trial_id, "trial_process_start", process_start_time())
    log(trial_id, "trial_fn_start")
    _tune._worker_loop = traced_worker_loop
    _patch_fit(trial_id)
    try:
        _ORIGINAL_TRIAL(params, **kwargs)
    finally:
        log(trial_id, "trial_fn_end")


_current = {"trial": "", "first_step_logged": set()}


def _trace_training(trial_id: str) -> None:
    """Wrap train_loop, build_model and the first training batch of this process (once per process;
    the trial id is per call, because a reused trial process runs several trials)."""
    import lorsp.train as lt

    _current["trial"] = trial_id
    if getattr(lt, "_traced", False):
        return
    lt._traced = True  # type: ignore[attr-defined]
    train_loop, build_model = lt.train_loop, lt.build_model
    iterate = lt.BatchIterator.__iter__

    def traced_train_loop(*args: Any, **kwargs: Any) -> Any:
        log(_current["trial"], "train_loop_start")
        return train_loop(*args, **kwargs)

    def traced_build_model(*args: Any, **kwargs: Any) -> Any:
        log(_current["trial"], "build_model_start")
        try:
            return build_model(*args, **kwargs)
        finally:
            log(_current["trial"], "build_model_end")

    def traced_iter(self: Any) -> Any:
        for i, batch in enumerate(iterate(self)):
            trial = _current["trial"]
            if i == 0 and self.shuffle and trial not in _current["first_step_logged"]:
                _current["first_step_logged"].add(trial)
                log(trial, "first_step")
            yield batch

    lt.train_loop, lt.build_model = traced_train_loop, traced_build_model
    lt.BatchIterator.__iter__ = traced_iter  # type: ignore[method-assign]


def traced_worker_loop(config: dict[str, Any]) -> None:
    """``lorsp.tune._worker_loop`` with timestamps (runs in the Ray Train worker process)."""
    import ray.train

    trial_id = ray.train.get_context().get_experiment_name().rsplit("-", 1)[-1]
    log(trial_id, "worker_process_start", process_start_time())
    log(trial_id, "worker_fn_start")
    import timm  # noqa: F401  (build_model imports it lazily; count it here, not as model building)

    import lorsp.train  # noqa: F401

    log(trial_id, "imports_done")
    _trace_training(trial_id)
    _ORIGINAL_WORKER_LOOP(config)


def direct_trial(params: dict[str, Any], study_json: str, splits_ref: Any, storage_path: str) -> None:
    """A one-worker trial without Ray Train: ``train_loop`` in the Tune trial process itself.

    Same resolved study, same data reference, same metrics and checkpoints as ``lorsp.tune._trial``
    (``ray.tune.report`` instead of ``ray.train.report``); with ``reuse_actors=True`` the trial
    process, and with it the imported torch/timm, is kept from one trial to the next.
    """
    import ray
    import ray.tune

    from lorsp.config import StudyConfig
    from lorsp.tune import OPTUNA_TRIAL_KEY

    trial_id = ray.tune.get_context().get_trial_id()
    log(trial_id, "trial_process_start", process_start_time())
    log(trial_id, "trial_fn_start")
    import timm  # noqa: F401

    import lorsp.train as lt

    log(trial_id, "imports_done")
    _trace_training(trial_id)
    params = {k: v for k, v in params.items() if k != OPTUNA_TRIAL_KEY}
    study = StudyConfig.model_validate_json(study_json).with_params(params)
    if study.train.threads is None:
        study.train.threads = max(1, int(study.resources.cpus_per_worker))
    splits = ray.get(splits_ref[0]) if splits_ref else None

    where = _tune._placement()

    def report(metrics: dict[str, float], folder: str | None) -> None:
        checkpoint = ray.tune.Checkpoint.from_directory(folder) if folder else None
        ray.tune.report({**metrics, **where}, checkpoint=checkpoint)

    checkpoint = ray.tune.get_checkpoint()
    try:
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                lt.train_loop(study, report, splits=splits, resume_from=folder, verbose=False)
        else:
            lt.train_loop(study, report, splits=splits, verbose=False)
    except lt.TrainingDiverged as err:
        ray.tune.report({"diverged": 1.0, "error": str(err)})
        raise RuntimeError(str(err)) from None
    finally:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # a reused process must not sit on a shared GPU's memory
        log(trial_id, "trial_fn_end")
