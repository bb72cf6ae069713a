"""Every process `python -m lorsp.ui` starts ends with it (issue 25): real `lorsp.ui` processes on a tiny
embedded store, real signals, real MLflow server trees; and the helper it uses (lorsp.children) on
small process trees.

What "a process it started" is: a descendant of lorsp.ui seen while it serves, or any live process
carrying the test's mark in its environment (every process of the tree inherits it, including one
re-parented to PID 1 after its parent died), so a leftover cannot hide. Waits are bounded polls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from lorsp.children import ChildGroup, Stopped, stop_signals
from lorsp.ports import free_port, port_free
from tests.conftest import REPO

MARK = "LORSP_TEST_UI_STOP"
UI_START_S = 300.0  # a loaded 2-core machine: mlflow's imports and schema check before /health answers


# ---------------------------------------------------------------- processes, from /proc
def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgid, sid, ...); None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in "ZX"


def _marked(tag: str) -> set[int]:
    """Live processes whose environment carries MARK=tag."""
    needle = f"{MARK}={tag}".encode()
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                environ = Path(entry.path, "environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0") and _alive(int(entry.name)):
                found.add(int(entry.name))
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] not in "ZX":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _until(condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


# ---------------------------------------------------------------- lorsp.ui on a tiny store
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded store as lorsp.tracking lays it out (ROOT/mlflow.db), with its schema and one experiment."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("ui-stop") / "lorsp-runs"
    root.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").create_experiment("not a study")
    return root


def _ui(root: Path, port: int, tag: str, log: Path, *extra: str) -> ChildGroup:
    """`python -m lorsp.ui` in a session of its own (so its process group is its own), marked, its
    output in a file. A ChildGroup for its `stop` (the test's cleanup), without the keeper: the
    signals under test go to lorsp.ui itself."""
    with log.open("w") as sink:
        return ChildGroup([sys.executable, "-m", "lorsp.ui", "--root", str(root), "--port", str(port), *extra],
                          die_with_parent=False, cwd=REPO, env={**os.environ, MARK: tag}, stdout=sink,
                          stderr=subprocess.STDOUT)


def _serving(ui: ChildGroup, log: Path) -> None:
    if not _until(lambda: "MLflow UI:" in log.read_text() or ui.poll() is not None, UI_START_S, 0.25):
        ui.stop()
        pytest.fail(f"lorsp.ui did not serve within {UI_START_S:.0f} s:\n{log.read_text()[-3000:]}")
    assert ui.poll() is None, log.read_text()[-3000:]


@pytest.mark.slow  # each starts a real MLflow server: about 10-20 s on 2 cores
@pytest.mark.parametrize(("sig", "target", "code"), [
    (signal.SIGTERM, "pid", 143),    # kill PID, a supervisor, systemctl stop, a container stop
    (signal.SIGHUP, "group", 129),   # the terminal closed: its whole process group
    (signal.SIGINT, "group", 130),   # Ctrl-C: the foreground process group
], ids=["SIGTERM-to-pid", "SIGHUP-to-group", "SIGINT-to-group"])
def test_a_stop_signal_ends_the_server_and_frees_the_port(root: Path, tmp_path: Path, sig, target, code):
    port, tag, log = free_port("127.0.0.1"), uuid.uuid4().hex, tmp_path / "ui.log"
    ui = _ui(root, port, tag, log)
    try:
        _serving(ui, log)
        started = (_descendants(ui.pid) | _marked(tag)) - {ui.pid}
        assert any(" mlflow server " in _cmdline(p) for p in started), [_cmdline(p) for p in started]
        assert any("uvicorn" in _cmdline(p) for p in started), [_cmdline(p) for p in started]

        # A second lorsp.ui on the same port: one line naming the port and the process that holds it.
        second = subprocess.run([sys.executable, "-m", "lorsp.ui", "--root", str(root), "--port", str(port)],
                                cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and second.stderr.startswith(f"error: --port {port} "), second.stderr
        assert "already in use by pid " in second.stderr
        holder = int(second.stderr.split("already in use by pid ")[1].split()[0])
        assert holder in started and "uvicorn" in second.stderr, (second.stderr, started)

        (os.kill if target == "pid" else os.killpg)(ui.pid, sig)
        assert ui.process.wait(timeout=60) == code, log.read_text()[-3000:]
        # lorsp.ui waited for its server: nothing it started is left the moment it has ended.
        assert not {p for p in started if _alive(p)} and not _marked(tag), log.read_text()[-3000:]
        assert port_free(port)
        assert f"{sig.name}: stopped the mlflow server on http://127.0.0.1:{port}" in log.read_text()
    finally:
        ui.stop()


@pytest.mark.slow
def test_a_server_that_does_not_start_in_time_is_stopped_too(root: Path, tmp_path: Path):
    """The error path: --timeout 0 gives up at once, after the server was started (and had time to
    fork while lorsp.ui wrote the studies' views)."""
    port, tag, log = free_port("127.0.0.1"), uuid.uuid4().hex, tmp_path / "ui.log"
    ui = _ui(root, port, tag, log, "--timeout", "0")
    seen: dict[int, str] = {}  # pid: its command line, as last seen
    try:
        deadline = time.monotonic() + 120
        while ui.poll() is None and time.monotonic() < deadline:
            seen.update({p: _cmdline(p) or seen.get(p, "") for p in _marked(tag) - {ui.pid}})
            time.sleep(0.05)
        assert ui.process.wait(timeout=30) == 2
        assert any(" mlflow server " in c for c in seen.values()), (seen, log.read_text()[-3000:])
        assert not {p for p in seen if _alive(p)} and not _marked(tag), log.read_text()[-3000:]
        lines = [line for line in log.read_text().splitlines() if line.startswith("error:")]
        assert lines == [f"error: the mlflow server did not start on http://127.0.0.1:{port} (not within 0 s); "
                         "see its output above"], log.read_text()[-3000:]
    finally:
        ui.stop()


@pytest.mark.slow
def test_a_killed_ui_still_takes_its_server_down(root: Path, tmp_path: Path):
    """SIGKILL cannot be caught: the keeper lorsp.ui started the server under gets the parent-death
    signal and ends the server's whole session."""
    port, tag, log = free_port("127.0.0.1"), uuid.uuid4().hex, tmp_path / "ui.log"
    ui = _ui(root, port, tag, log)
    try:
        _serving(ui, log)
        started = (_descendants(ui.pid) | _marked(tag)) - {ui.pid}
        assert started
        os.kill(ui.pid, signal.SIGKILL)
        assert ui.process.wait(timeout=30) == -signal.SIGKILL
        assert _until(lambda: not {p for p in started if _alive(p)} and not _marked(tag), 30), \
            [_cmdline(p) for p in _marked(tag)]
        assert _until(lambda: port_free(port), 10)
    finally:
        ui.stop()


# ---------------------------------------------------------------- the helper, on small trees
TREE = """
import os, subprocess, sys, time
same = subprocess.Popen(["sleep", "300"])
own_group = subprocess.Popen(["sleep", "300"], process_group=0)  # left the group, not the session
print(same.pid, own_group.pid, flush=True)
time.sleep(300)
"""


def _session(sid: int) -> set[int]:
    return {int(e.name) for e in os.scandir("/proc") if e.name.isdigit()
            and (fields := _stat(int(e.name))) and fields[0] not in "ZX" and int(fields[3]) == sid}


@pytest.mark.parametrize("keeper", [True, False], ids=["keeper", "no-keeper"])
def test_stop_ends_the_whole_tree_and_waits_for_it(keeper: bool):
    group = ChildGroup([sys.executable, "-c", TREE], die_with_parent=keeper, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in group.process.stdout.readline().split()]
        assert set(pids) | {group.pid} <= set(group.members())
        assert os.getpgid(pids[1]) != group.pid and os.getsid(pids[1]) == group.pid
        tick = time.monotonic()
        assert group.stop(timeout=20) == -signal.SIGTERM  # the command's end, through the keeper too
        assert time.monotonic() - tick < 10
        assert not [p for p in [group.pid, *pids] if _alive(p)] and not group.members()
        assert group.stop() == -signal.SIGTERM  # again: nothing to do
    finally:
        group.stop()


def test_stop_kills_what_ignores_sigterm():
    ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    group = ChildGroup([sys.executable, "-c", f"{ignore}; print('ready', flush=True); import time; time.sleep(300)"],
                       stdout=subprocess.PIPE, text=True)
    try:
        assert group.process.stdout.readline().strip() == "ready"
        tick = time.monotonic()
        assert group.stop(timeout=0.5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - tick < 10
        assert not group.members()
    finally:
        group.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_group_ends_when_its_parent_is_killed():
    """Its parent SIGKILLed, the keeper ends the session, even processes that ignore SIGTERM."""
    script = ("import time\nfrom lorsp.children import ChildGroup\n"
              "g = ChildGroup(['sh', '-c', \"trap '' TERM; sleep 300 & sleep 300\"], stop_timeout=1)\n"
              "print(g.pid, flush=True)\ntime.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    session: set[int] = set()
    try:
        sid = int(parent.stdout.readline())
        assert _until(lambda: len(_session(sid)) >= 4, 30)  # the keeper, sh and its two sleeps
        session = _session(sid)
        parent.kill()
        parent.wait(timeout=30)
        assert _until(lambda: not _session(sid), 30), [_cmdline(p) for p in _session(sid)]
    finally:
        parent.kill()
        parent.wait(timeout=30)
        for pid in session:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_raise_once_then_wait_for_the_cleanup(sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with pytest.raises(Stopped) as caught, stop_signals():
        try:
            os.kill(os.getpid(), sig)  # handled before os.kill returns (the main thread)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal during the cleanup: ignored
    assert caught.value.signum == sig and caught.value.exit_code == 128 + sig
    assert isinstance(caught.value, KeyboardInterrupt)
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_command_killed_by_sigkill_ends_its_keeper_the_same_way_without_a_traceback():
    # SIGKILL and SIGSTOP have no handler to reset; the keeper once died on that with a traceback
    # printed under every study's closing lines (the head is SIGKILLed when it outlives the stop).
    group = ChildGroup(["sh", "-c", "kill -9 $$"], stderr=subprocess.PIPE, text=True)
    try:
        assert group.process.wait(timeout=60) == -signal.SIGKILL
        assert group.process.stderr.read() == ""
    finally:
        group.stop()
