"""The embedded local Ray of `python -m lorsp.tune`, in a session of its own that ends with the driver.

Why not `ray.init(address="local")` in the driver itself: the head processes it starts share the
driver's process group, and GNU `timeout`, a closing terminal, a batch scheduler's preemption or a
container stop signal the whole group. The head then dies at the same moment as the driver, Ray
aborts the driver before it can record the stop, and the study is left RUNNING.

So the head is started by a small process (`python -m lorsp.embedded_ray`) that runs `ray.init` and
waits, in a session of its own (:class:`lorsp.children.ChildGroup`): no signal meant for the driver's
group reaches it. The driver attaches to it as to any cluster, records the stop, and then ends the
whole session (:meth:`EmbeddedRay.stop`). The session also ends when the driver dies without a word
(`kill -9`): ChildGroup's keeper is told by the kernel, so no head outlives its driver.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from lorsp.children import STOP_SIGNALS, ChildGroup

READY = "lorsp-embedded-ray ready "
"""The line the head's process prints once the head answers, followed by its GCS address."""
START_TIMEOUT_S = 180.0
"""How long the driver waits for the head: a loaded 2-core machine has taken over a minute."""
STOP_TIMEOUT_S = 5.0
"""How long the head gets to shut down before what is left of its session is killed: it is ephemeral,
and the study was recorded before it is stopped."""


class EmbeddedRay:
    """A running embedded head: its GCS address, and the process group that ends it."""

    def __init__(self, group: ChildGroup, address: str) -> None:
        self.group = group
        self.process = group.process  # the session's leader
        self.address = address

    def stop(self) -> None:
        """Shut the head down and wait until nothing of its session is left (SIGKILL after a while)."""
        self.group.stop()


def start(num_cpus: int | None = None, port: int | None = None, timeout: float = START_TIMEOUT_S) -> EmbeddedRay:
    """Start the head in a session of its own; return once it answers. RuntimeError if it never does."""
    from lorsp.ports import free_port

    cmd = [sys.executable, "-m", "lorsp.embedded_ray", "--port", str(port or free_port())]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    group = ChildGroup(cmd, stop_timeout=STOP_TIMEOUT_S, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    address = _wait_ready(group.process, timeout)
    if address is None:
        code = group.poll()
        group.stop(timeout=5)
        raise RuntimeError(f"the embedded Ray did not start within {timeout:.0f}s (exit code {code}); "
                           "see its output above")
    return EmbeddedRay(group, address)


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


# ---------------------------------------------------------------- the head's process
def _serve(port: int, num_cpus: int | None) -> int:
    import logging

    import ray

    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    context = ray.init(address="local", num_cpus=num_cpus, logging_level="WARNING", log_to_driver=False,
                       include_dashboard=True)
    # After ray.init, which installs handlers of its own: a stop signal ends the head quietly.
    stop = threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    print(f"{READY}{context.address_info['gcs_address']}", flush=True)
    stop.wait()
    ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.embedded_ray", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the head's GCS port")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of the head (default: the machine's)")
    args = parser.parse_args(argv)
    return _serve(args.port, args.num_cpus)


if __name__ == "__main__":
    sys.exit(main())
