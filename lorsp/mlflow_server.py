"""An `mlflow server` on this machine: its command line, and whether (and when) it answers.

One place for what `python -m lorsp.ui` (the UI over a study's store) and the local cluster's
services (`cluster/local_cluster.py`, an MLflow server on PostgreSQL) both do. Starting the process
stays with the caller: the UI runs it in the foreground, the cluster detaches it and logs to a file.
Standard library only: no MLflow import is needed to start its server or to ask it for /health.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# The servers are on 127.0.0.1: a proxy from the environment (http_proxy) must never be asked for them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def server_command(backend: str, artifacts: Path, port: int, host: str = "127.0.0.1",
                   env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line for a backend store and an artifact folder, and its environment.

    The backend store goes in the environment (`MLFLOW_BACKEND_STORE_URI`, which `mlflow server`
    reads for `--backend-store-uri`), not on the command line: a database URI may carry a password,
    and every user of the machine can read a process's command line (`ps`), not its environment.
    One worker: these servers have one user (a study driver, a browser), and every extra gunicorn
    worker is a process holding its own database connections.
    """
    argv = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", str(artifacts), "--host", host,
            "--port", str(port), "--workers", "1"]
    return argv, {**(os.environ if env is None else env), "MLFLOW_BACKEND_STORE_URI": backend}


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether the server at `url` (http://host:port) answers its /health endpoint with 200 now."""
    try:
        with _DIRECT.open(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until_up(url: str, process: subprocess.Popen | None, timeout: float) -> bool:
    """Poll `url/health` until it answers (True), the process dies or the time is up (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False  # checked first: a dead server's port may be answered by another one
        if answers(url):
            return True
        time.sleep(0.3)
    return False
