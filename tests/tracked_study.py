"""One small study recorded twice, in the embedded sqlite store and through a real `mlflow server`
that is killed after the first trial, run once per test session (the `tracked_study` fixture in
conftest.py) and read by the tracking and export tests.

Not a test module: pytest collects nothing here.
"""

from __future__ import annotations

import _thread
import atexit
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from lorsp.config import load_study
from lorsp.ports import free_port
from tests.conftest import QUICKSTART

NAME = "trk"
# ASHA on trainable_params (min) with the random sampler, seed 11: trials 0 and 1 sample rank 1,
# trial 2 samples rank 6, so trial 2 has more parameters than both and is always stopped at the
# first rung (epoch 1) whatever the order in which the two concurrent trials report.
OVERRIDES = [
    "train.epochs=2", "data.max_train=200", "search.num_samples=3", "search.max_concurrent=2",
    "search.sampler=random", "search.seed=11", f"name={NAME}", "prompt.method=lorsp",
    "search.scheduler={type: asha, metric: trainable_params, mode: min, grace_period: 1, reduction_factor: 2}",
]


# ---------------------------------------------------------------- a real MLflow server
class Server:
    """`mlflow server` (the command `python -m lorsp.ui` runs) on a sqlite backend, in its own session,
    ended with the test session even when that is killed (lorsp.children: the parent-death signal)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        from lorsp.children import ChildGroup
        from lorsp.mlflow_server import server_command

        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / f"server-{self.port}.log").open("w")
        argv, env = server_command(f"sqlite:///{self.folder / 'mlflow.db'}", self.folder / "artifacts", self.port)
        self.process = ChildGroup(argv, env=env, stdout=log, stderr=subprocess.STDOUT).process
        atexit.register(self.kill)
        return self

    def wait(self, timeout: float = 240.0) -> Server:
        from lorsp.mlflow_server import wait_until_up

        if not wait_until_up(self.uri, self.process, timeout):
            self.kill()
            log = (self.folder / f"server-{self.port}.log").read_text()[-2000:]
            raise RuntimeError(f"mlflow server did not start on {self.uri}:\n{log}")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn worker
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)


class KillServerAfterFirstTrial(Callback):
    """A Tune callback that kills the tracking server when the first trial ends (listed last, so
    the server's own recorder logs that trial first)."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.killed_at: float | None = None

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.killed_at is None:
            self.killed_at = time.time()
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------- the study
STUDY_DEADLINE_S = 900.0


def run_tracked_study(base: Path) -> dict[str, Any]:
    import ray

    from lorsp.tracking import finish_study, tracking_uri
    from lorsp.tracking.callback import tune_callbacks
    from lorsp.tune import run_study

    assert ray.is_initialized(), "run on the session's Ray (the local_ray fixture)"
    tick = time.perf_counter()
    server = Server(base / "server").start()
    server.wait()
    # The "restarted" server the re-log test uses: the same backend database at another address,
    # booted now (after the first one created the schema) so that it is up by the time it is needed.
    standby = Server(server.folder).start()
    study = load_study(QUICKSTART, [*OVERRIDES, f"tracking.root={base / 'runs'}"])
    sqlite_callbacks = tune_callbacks(study)
    server_study = study.model_copy(update={"tracking": study.tracking.model_copy(update={"uri": server.uri})})
    server_callbacks = tune_callbacks(server_study)
    callback_warnings: list[str] = []
    server_callbacks[0]._warn = callback_warnings.append
    killer = KillServerAfterFirstTrial(server.process.pid)
    # A stuck cluster must fail the tests, not hang them: interrupt the search (Tune stops it
    # cleanly on SIGINT) after STUDY_DEADLINE_S.
    watchdog = threading.Timer(STUDY_DEADLINE_S, _thread.interrupt_main)
    watchdog.start()
    try:
        records = run_study(study, callbacks=[*sqlite_callbacks, *server_callbacks, killer]).records
    finally:
        watchdog.cancel()
    finished = finish_study(study, records)
    warnings: list[str] = []
    t0 = time.perf_counter()
    server_finished = finish_study(server_study, records, warn=warnings.append)
    # What the command line does at the end: the callback already warned, so no second warning.
    silent: list[str] = []
    assert finish_study(server_study, records, warn=silent.append, warned=True) is None and not silent
    return {
        "base": base, "root": base / "runs", "study": study, "records": records, "server": server,
        "standby": standby, "servers": [standby],
        "server_study": server_study, "sqlite_uri": tracking_uri(study), "sqlite_callback": sqlite_callbacks[0],
        "server_callback": server_callbacks[0], "callback_warnings": callback_warnings, "killer": killer,
        "finished": finished,
        "server_finished": server_finished, "server_finish_warnings": warnings,
        "server_finish_s": time.perf_counter() - t0, "study_s": time.perf_counter() - tick,
    }
