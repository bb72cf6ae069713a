"""One driver per study (:mod:`lorsp.lease`), on a real SQLite Optuna database: a live holder is
named and refused, a dead or silent one is taken over, and of two drivers racing for one lease
exactly one wins. The end-to-end two-driver and kill -9 studies are in tests/test_driver.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from lorsp import lease as lease_module
from lorsp.config import ConfigError
from lorsp.lease import STALE_S, TABLE, StudyLease


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _rows(uri: str) -> list:
    with sa.create_engine(uri).connect() as conn:
        return list(conn.execute(sa.text(f"SELECT study_name, host, pid, heartbeat FROM {TABLE}")))


def test_a_second_driver_is_refused_in_one_line_naming_the_first(uri):
    with StudyLease(uri, "s"):
        with pytest.raises(ConfigError) as err:
            StudyLease(uri, "s").acquire()
        line = str(err.value)
        assert "\n" not in line and f"on {socket.gethostname()}" in line and f"pid {__import__('os').getpid()}" in line
        assert "--resume" in line
        with StudyLease(uri, "other"):  # other studies of the same storage are not held
            pass
    with StudyLease(uri, "s"):  # released on exit: the next driver takes it
        pass
    assert _rows(uri) == []


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(uri):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with StudyLease(uri, "s") as first:
        first._stop.set()  # stop beating; then pretend the holder was that dead process
        with first.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {TABLE} SET pid = :pid"), {"pid": dead.pid})
        with StudyLease(uri, "s") as second:
            assert second.took_over is not None and second.took_over.pid == dead.pid
            (row,) = _rows(uri)
            assert row.pid == __import__("os").getpid()


def test_a_silent_holder_on_another_host_is_taken_over_only_once_stale(uri):
    with StudyLease(uri, "s") as first:
        first._stop.set()
        with first.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {TABLE} SET host = 'elsewhere', heartbeat = :t"),
                         {"t": time.time() - STALE_S / 2})
        with pytest.raises(ConfigError, match="on elsewhere"):
            StudyLease(uri, "s").acquire()  # quiet for a while, but not yet gone
        with first.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {TABLE} SET heartbeat = :t"), {"t": time.time() - STALE_S - 1})
        with StudyLease(uri, "s") as second:
            assert second.took_over.host == "elsewhere"


def test_of_drivers_racing_for_a_stale_lease_exactly_one_wins(uri):
    with StudyLease(uri, "s") as first:
        first._stop.set()
        with first.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {TABLE} SET host = 'elsewhere', heartbeat = 0"))
        outcomes: list[str] = []
        start = threading.Barrier(4)

        def race() -> None:
            contender = StudyLease(uri, "s")
            start.wait()
            try:
                contender.acquire()
                outcomes.append("won")
            except ConfigError:
                outcomes.append("refused")

        threads = [threading.Thread(target=race) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["refused", "refused", "refused", "won"]


def test_the_holder_renews_its_heartbeat(uri, monkeypatch):
    monkeypatch.setattr(lease_module, "BEAT_S", 0.05)
    with StudyLease(uri, "s"):
        (before,) = _rows(uri)
        deadline = time.time() + 10
        while time.time() < deadline and _rows(uri)[0].heartbeat == before.heartbeat:
            time.sleep(0.05)
        assert _rows(uri)[0].heartbeat > before.heartbeat


def _contend(uri: str, out, stop) -> None:
    """One driver starting on a new database: open the Optuna storage, take the lease, hold it until told."""
    from lorsp.search import engine_kwargs, rdb_storage

    try:
        rdb_storage(uri)
        lease = StudyLease(uri, "s", engine_kwargs(uri)).acquire()
    except ConfigError as err:
        out.put(f"refused: {err}")
        return
    except Exception as err:  # what the test must never see: a race surfacing as a raw database error
        out.put(f"crashed: {type(err).__name__}: {err}")
        return
    out.put("won")
    stop.wait(60)
    lease.release()


@pytest.mark.slow
def test_drivers_started_at_the_same_moment_on_a_new_database_one_runs_the_others_are_refused(uri):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    out, stop = context.Queue(), context.Event()
    procs = [context.Process(target=_contend, args=(uri, out, stop)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        outcomes = sorted(out.get(timeout=120) for _ in procs)
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=30)
    assert outcomes[-1] == "won" and all(o.startswith("refused: study 's' is being run by") for o in outcomes[:-1]), \
        outcomes
