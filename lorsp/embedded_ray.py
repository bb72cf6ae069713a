"""The embedded local Ray of `python -m lorsp.tune`, in a session of its own that ends with the driver.

Why not `ray.init(address="local")` in the driver itself: the head processes it starts share the
driver's process group, and GNU `timeout`, a closing terminal, a batch scheduler's preemption or a
container stop signal the whole group. The head then dies at the same moment as the driver, Ray
aborts the driver before it can record the stop, and the study is left RUNNING.

So the head is started by a small keeper process (`python -m lorsp.embedded_ray`) in a new session:
no signal meant for the driver's group reaches it. The driver attaches to it as to any cluster,
records the stop, and then ends it (:meth:`EmbeddedRay.stop`). The keeper also ends the head when
the driver dies without a word (`kill -9`): the kernel tells it (PR_SET_PDEATHSIG on Linux), and it
polls its parent besides, so no head outlives its driver.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

READY = "lorsp-embedded-ray ready "
"""The line the keeper prints once the head answers, followed by its GCS address."""
START_TIMEOUT_S = 180.0
"""How long the driver waits for the head: a loaded 2-core machine has taken over a minute."""
STOP_TIMEOUT_S = 30.0
"""How long the keeper gets to shut the head down before its whole session is killed."""


class EmbeddedRay:
    """A running embedded head: its GCS address, and the keeper that ends it."""

    def __init__(self, process: subprocess.Popen, address: str) -> None:
        self.process = process
        self.address = address

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut the head down and wait; whatever is left of its session after `timeout` is killed."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _kill_session(self.process.pid)
        if self.process.poll() is None:
            self.process.wait()


def _kill_session(pgid: int) -> None:
    """SIGKILL to every process left in the keeper's process group (its head processes)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In the keeper, before exec: the kernel sends SIGTERM when the driver that started it dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the keeper's own poll of its parent still ends it


def start(num_cpus: int | None = None, port: int | None = None, timeout: float = START_TIMEOUT_S) -> EmbeddedRay:
    """Start a keeper and its head; return once the head answers. RuntimeError if it never does."""
    from lorsp.ports import free_port

    port = port or free_port()
    cmd = [sys.executable, "-m", "lorsp.embedded_ray", "--port", str(port), "--parent", str(os.getpid())]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                               start_new_session=True, preexec_fn=_die_with_parent)
    address = _wait_ready(process, timeout)
    if address is None:
        EmbeddedRay(process, "").stop(timeout=5)
        raise RuntimeError(f"the embedded Ray did not start within {timeout:.0f}s (exit code {process.poll()}); "
                           "see its output above")
    return EmbeddedRay(process, address)


def _wait_ready(process: subprocess.Popen, timeout: float) -> str | None:
    """The address from the keeper's ready line, read on a thread so that a silent keeper cannot hang us."""
    found: list[str] = []

    def read(stream: IO[str]) -> None:
        for line in stream:
            if line.startswith(READY):
                found.append(line[len(READY):].strip())
                break
            sys.stdout.write(line)  # Ray's own start-up lines, as a plain ray.init would print them
        # Keep draining, so a keeper that prints later never blocks on a full pipe.
        for line in stream:
            sys.stdout.write(line)

    reader = threading.Thread(target=read, args=(process.stdout,), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not found and process.poll() is None and time.monotonic() < deadline:
        reader.join(timeout=0.2)
    return found[0] if found else None


def attach_with_token_auth() -> None:
    """Make this process speak token auth to the embedded head, as ray.init does for a head it starts.

    The head (a new local cluster) turns token auth on and keeps its token in ~/.ray/auth_token, but
    ray.init never turns auth on for an explicit address, and Ray reads RAY_AUTH_MODE once per
    process, at import. Ray's own switch is private: this is the one place lorsp uses it
    (tests/test_embedded_ray.py fails loudly if Ray moves it). A mode the user set is left alone.
    """
    if os.environ.get("RAY_AUTH_MODE") is None:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()


# ---------------------------------------------------------------- the keeper process
def _keep(port: int, parent: int, num_cpus: int | None) -> int:
    import logging

    import ray

    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    context = ray.init(address="local", num_cpus=num_cpus, logging_level="WARNING", log_to_driver=False,
                       include_dashboard=True)
    # After ray.init, which installs handlers of its own: a stop signal ends the head quietly.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    print(f"{READY}{context.address_info['gcs_address']}", flush=True)
    while not stop.wait(0.5):
        if os.getppid() != parent:  # the driver is gone (and the kernel's signal did not come)
            break
    ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.embedded_ray", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the head's GCS port")
    parser.add_argument("--parent", type=int, required=True, help="pid of the driver this head ends with")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of the head (default: the machine's)")
    args = parser.parse_args(argv)
    return _keep(args.port, args.parent, args.num_cpus)


if __name__ == "__main__":
    sys.exit(main())
