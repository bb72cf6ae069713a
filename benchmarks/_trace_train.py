"""A Ray Train callback that logs controller and worker-group milestones (``benchmarks/trials.py``).

Loaded inside the Train controller through ``RAY_TRAIN_CALLBACKS=_trace_train.TraceTrainCallback``
(Ray Train V2 reads that variable when ``TorchTrainer.fit`` builds its callbacks), so the gap
between ``fit()`` and the first worker process can be split into controller start-up and
worker-group start-up without touching ``lorsp``.
"""

from __future__ import annotations

from typing import Any

from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

import _trace


class TraceTrainCallback(ControllerCallback, WorkerGroupCallback):
    def __init__(self) -> None:
        self._trial = ""

    def after_controller_start(self, train_run_context: Any) -> None:
        self._trial = train_run_context.get_run_config().name.rsplit("-", 1)[-1]
        _trace.log(self._trial, "controller_process_start", _trace.process_start_time())
        _trace.log(self._trial, "controller_started")

    def before_worker_group_start(self, worker_group_context: Any) -> None:
        _trace.log(self._trial, "worker_group_start_begin")

    def after_worker_group_start(self, worker_group: Any) -> None:
        _trace.log(self._trial, "worker_group_started")
