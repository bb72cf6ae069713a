"""The embedded Ray of `lorsp.tune` lives in a session of its own and ends with its driver
(:mod:`lorsp.embedded_ray`): real heads started and ended here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


def _session_alive(sid: int) -> list[int]:
    """Pids of live (not zombie) processes whose session is `sid`."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            alive.append(int(entry))
    return alive


def _wait_gone(sid: int, timeout: float = 60.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and _session_alive(sid):
        time.sleep(0.2)
    return _session_alive(sid)


def test_rays_token_switch_is_where_lorsp_reads_it():
    """The one private Ray function lorsp calls (embedded_ray.attach_with_token_auth): fail loudly if Ray moves it."""
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    assert callable(_enable_token_auth)


@pytest.mark.slow
def test_the_head_is_in_its_own_session_and_stop_leaves_nothing():
    from lorsp import embedded_ray

    head = embedded_ray.start(num_cpus=1)
    try:
        sid = os.getsid(head.process.pid)
        assert sid == head.process.pid != os.getsid(0)  # a session of its own: a signal to ours misses it
        assert len(_session_alive(sid)) > 2  # the keeper and the head's processes (gcs, raylet, ...)
        assert ":" in head.address
    finally:
        head.stop()
    assert _wait_gone(sid) == []


@pytest.mark.slow
def test_the_head_ends_when_its_driver_is_killed():
    code = ("from lorsp import embedded_ray; import sys, time; h = embedded_ray.start(num_cpus=1); "
            "print(h.process.pid, flush=True); time.sleep(600)")
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        keeper = next(int(line) for line in driver.stdout if line.strip().isdigit())
        assert _session_alive(keeper)
        driver.send_signal(signal.SIGKILL)  # no word to anyone: the kernel tells the keeper
        driver.wait()
        assert _wait_gone(keeper) == []
    finally:
        if driver.poll() is None:
            driver.kill()
