"""Long-lived helper processes that end with the lorsp command that started them.

A server lorsp starts for the user (the MLflow server of `python -m lorsp.ui`, the ones the tests
start) is a tree: `mlflow server` forks uvicorn and a job runner, which forks its consumers. Two
pieces keep any of them from outliving the lorsp command:

* :class:`ChildGroup` starts a helper in a session (and process group) of its own, so a signal
  sent to the lorsp command's process group (Ctrl-C, a closed terminal) reaches the lorsp command
  alone, which then stops the helper's whole tree (:meth:`ChildGroup.stop`): SIGTERM to every
  process of the session, a wait until none of it is left (a port it listened on is then free),
  SIGKILL for whatever is still there after a timeout. On Linux the session's leader is a small
  keeper (this file run as a script) that starts the helper, waits for it and ends as it ends; it
  gets SIGTERM when the thread that started it dies without stopping it (SIGKILL, a crash: Linux's
  parent-death signal) and then stops the session the same way, whatever the helper itself does
  with SIGTERM.
* :func:`stop_signals` turns SIGINT, SIGTERM and SIGHUP into a :class:`Stopped` exception in the
  main thread, so a `finally` (or a `with`) stops the group on any of them, as on an error; later
  signals are ignored until it is done, so that stop is never cut short.

Standard library only; processes are read from /proc (Linux), with a signal-0 probe elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

#: The signals that stop a lorsp command: Ctrl-C, `kill` / a supervisor / a container stop, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
_KILL_WAIT_S = 10.0  # after SIGKILL: only the kernel's own time to tear a process down


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) raised in the main thread by :func:`stop_signals`.

    A KeyboardInterrupt, so code written for Ctrl-C cleans up the same way on each of them.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """What a shell reports for a command ended by this signal: 130, 143, 129."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """While inside: the first of `signals` raises :class:`Stopped`; later ones are ignored (the
    cleanup the first one started runs to its end). The previous handlers come back on exit.
    Only the main thread receives signals in Python: from another thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handle(signum: int, _frame: object) -> None:
        if not raised:
            raised.append(signum)
            raise Stopped(signum)

    previous = {sig: signal.signal(sig, handle) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- processes
def _processes() -> dict[int, tuple[int, int, int, int]] | None:
    """{pid: (ppid, pgid, sid, start time)} of every live (not zombie) process, from /proc; None
    where there is no /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    found = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if fields[0] in "ZX":
            continue
        found[int(entry.name)] = (int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    return found


def _send(sig: int, pids: dict[int, int]) -> None:
    """`sig` to each of `pids` ({pid: start time}) that is still the same process (not a reused pid)."""
    table = _processes() or {}
    for pid, start in pids.items():
        if pid in table and table[pid][3] == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _end(find: Callable[[], dict[int, int]], send: Callable[[int, dict[int, int]], None],
         done: Callable[[], bool], timeout: float) -> None:
    """SIGTERM to what `find` lists, wait until none of it (nor anything `find` lists later) is left
    and `done`, SIGKILL what is still there after `timeout` s; RuntimeError if anything survives that."""

    def wait(pids: dict[int, int], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            table = _processes()
            left = find()
            if table is not None:
                left.update({p: s for p, s in pids.items() if p in table and table[p][3] == s})
            if not left and done():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    pids = find()
    send(signal.SIGTERM, pids)
    if not wait(pids, timeout):
        pids.update(find())
        send(signal.SIGKILL, pids)
        if not wait(pids, _KILL_WAIT_S):
            raise RuntimeError(f"processes {sorted(find())} survived SIGKILL")


class ChildGroup:
    """`argv` started in a session and process group of its own, stopped as a whole.

    ``ChildGroup(argv, **popen_kwargs)`` starts it (keyword arguments go to :class:`subprocess.Popen`);
    :meth:`stop` ends it and everything it started; as a context manager it stops on leaving.
    `process` is the session's leader: the keeper (Linux, `die_with_parent`), which exits as the
    command exits (its code, or killed by the same signal), else the command itself. Start it from
    the main thread or from one that lives as long as the group should: the parent-death signal
    follows the thread that started the keeper, not the process.
    """

    def __init__(self, argv: Sequence[str], *, stop_timeout: float = 10.0, die_with_parent: bool = True,
                 **popen_kwargs) -> None:
        argv = [str(a) for a in argv]
        self.stop_timeout = stop_timeout
        if die_with_parent and sys.platform.startswith("linux") and sys.executable and Path(__file__).is_file():
            argv = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(os.getpid()), str(stop_timeout),
                    *argv]
        self.process = subprocess.Popen(argv, start_new_session=True, **popen_kwargs)
        self.pid = self.process.pid  # also the group's and the session's id

    def poll(self) -> int | None:
        """The leader's exit code, or None while it runs."""
        return self.process.poll()

    def members(self) -> dict[int, int]:
        """{pid: start time} of every live process of the group: those of its session (a member that
        moved to a process group of its own is still there) and the leader's descendants (one that
        left the session too, until its parent ends); the leader alone where there is no /proc."""
        table = _processes()
        if table is None:
            try:
                os.killpg(self.pid, 0)
            except (ProcessLookupError, PermissionError):
                return {}
            return {self.pid: 0}
        found = {pid for pid, (_, _, sid, _) in table.items() if sid == self.pid}
        if self.process.returncode is not None:  # reaped: its pid may be another process's by now
            return {pid: table[pid][3] for pid in found}
        if self.pid in table:
            found.add(self.pid)
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return {pid: table[pid][3] for pid in found}

    def _signal(self, sig: int, pids: dict[int, int]) -> None:
        table = _processes()
        # The group's id is ours while the leader is unreaped or a member is in the group; after
        # that it may be another group's.
        if table is None or self.process.returncode is None or any(g == self.pid for _, g, _, _ in table.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            # one signal each: the group has it; the others (a process group of their own, or out of the session)
            pids = {p: s for p, s in pids.items() if table is None or p not in table or table[p][1] != self.pid}
        _send(sig, pids)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM to every process of the group, wait until none is left, SIGKILL what is still there
        after `timeout` seconds (default `stop_timeout`) and wait for that too; returns the leader's
        exit code (negative: the signal that ended it). Again, or on a group that ended: only the rest."""
        if self.members() or self.process.poll() is None:
            _end(self.members, self._signal, lambda: self.process.poll() is not None,
                 self.stop_timeout if timeout is None else timeout)
        return self.process.wait()

    def __enter__(self) -> ChildGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- the keeper (this file as a script)
def _keep(parent: int, timeout: float, argv: list[str]) -> int:
    """Run `argv` in this session (this process leads it) and end as it ends; on a stop signal, the
    parent-death signal included, end every other process of the session first.

    The signals are blocked and taken with sigwaitinfo, never by a handler: a handler's exception
    inside Popen.wait can land after the child is reaped and before its status is kept."""
    import ctypes

    watched = {*STOP_SIGNALS, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    me = os.getpid()
    command = None
    if os.getppid() == parent:  # else the parent died before it could be watched
        # close_fds=False: what the caller passed this process (pass_fds) goes on to the command.
        command = subprocess.Popen(argv, close_fds=False,
                                   preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, watched))
        while command.poll() is None and signal.sigwaitinfo(watched).si_signo == signal.SIGCHLD:
            pass
    if command is None or command.returncode is None:  # a stop signal (later ones stay blocked, unread)

        def others() -> dict[int, int]:
            return {p: start for p, (_, _, sid, start) in (_processes() or {}).items() if sid == me and p != me}

        _end(others, _send, lambda: command is None or command.poll() is not None, timeout)
    status = command.returncode if command is not None else -signal.SIGTERM
    if status < 0:  # end as the command ended: by the same signal
        if -status not in (signal.SIGKILL, signal.SIGSTOP):  # these two have no handler to reset
            signal.signal(-status, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {-status})
        os.kill(me, -status)
        return 128 - status
    return status


if __name__ == "__main__":
    sys.exit(_keep(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]))
