"""Timestamps from inside Ray trial and Train worker processes, for ``benchmarks/trials.py``.

Nothing in ``lorsp`` is edited: ``trials.py`` swaps the trial functions of ``lorsp.tune``
(looked up by ``run_study`` when it builds the trainable) for traced ones that log and then call
the originals. :func:`traced_trial` (launcher ``ray_train``) also swaps ``lorsp.tune._worker_loop``
for :func:`traced_worker_loop` before the original builds its ``TorchTrainer``;
:func:`traced_inline_trial` (launcher ``inline``) trains in the trial process itself. Both wrap
``train_loop``, ``build_model`` and the first training batch. Every event is one JSON line
``{trial, event, t}`` (wall clock, same machine) appended to the file named by
``LORSP_TRACE_FILE``. This module must be importable in Ray's worker processes: ``trials.py`` puts
the ``benchmarks`` folder on their ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import lorsp.tune as _tune

TRACE_ENV = "LORSP_TRACE_FILE"
_ORIGINAL_TRIAL = _tune._ray_train_trial
_ORIGINAL_INLINE_TRIAL = _tune._inline_trial
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
    """``lorsp.tune._ray_train_trial`` with timestamps (runs in the Tune trial process)."""
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


def traced_inline_trial(params: dict[str, Any], **kwargs: Any) -> None:
    """``lorsp.tune._inline_trial`` with timestamps (the trial process trains itself)."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    log(trial_id, "trial_process_start", process_start_time())
    log(trial_id, "trial_fn_start")
    import timm  # noqa: F401  (free after the first trial of a reused process)

    import lorsp.train  # noqa: F401

    log(trial_id, "imports_done")
    _trace_training(trial_id)
    try:
        _ORIGINAL_INLINE_TRIAL(params, **kwargs)
    finally:
        log(trial_id, "trial_fn_end")
