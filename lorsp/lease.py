"""One driver per study: a lease on the study, held in the study's own Optuna database.

Two drivers on one study corrupt it: each takes the other's live trials for interrupted ones, both
run them, and both write into one MLflow parent run. So a driver first takes the study's lease, a row
in a table of its own beside Optuna's (`lorsp_driver_lease`, the same on SQLite and PostgreSQL, and
so across machines): who holds it (host, pid), since when, and a heartbeat it renews every
:data:`BEAT_S` seconds from a thread. A second driver is refused in one line that names the holder.

A lease whose holder is gone is taken over: at once when the holder ran on this host and its pid no
longer exists (`kill -9`), else once its heartbeat is :data:`STALE_S` seconds old (a lost node).
Taking over is one conditional UPDATE on the old holder's token, so of two drivers that find the same
stale lease only one wins. Only then may ``--resume`` treat the study's RUNNING trials as interrupted:
they belonged to the driver that died.

Why not Optuna's own heartbeats: they are per trial (RDBStorage's `heartbeat_interval`), say nothing
of which driver holds a study, and `fail_stale_trials` marks stale trials FAIL, while an interrupted
lorsp trial goes back to the queue to be finished under its own number.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from typing import Any

import sqlalchemy as sa

from lorsp.errors import ConfigError

BEAT_S = 10.0
"""How often the holder renews its heartbeat."""
STALE_S = 60.0
"""A heartbeat this old means the holder is gone (several missed beats, not one slow write)."""
TABLE = "lorsp_driver_lease"

_metadata = sa.MetaData()
_leases = sa.Table(
    TABLE, _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
)


class Holder:
    """A lease row as read back: who holds the study, and whether they are still there."""

    def __init__(self, row: Any) -> None:
        self.token, self.host, self.pid = row.token, row.host, int(row.pid)
        self.since, self.heartbeat = float(row.since), float(row.heartbeat)

    def alive(self, now: float) -> bool:
        if now - self.heartbeat > STALE_S:
            return False
        if self.host == socket.gethostname():
            return _pid_alive(self.pid)
        return True

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return (f"a driver on {self.host} (pid {self.pid}, since {started}, "
                f"last heartbeat {max(0.0, now - self.heartbeat):.0f}s ago)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


class StudyLease:
    """The lease of study `name` in the database at `uri` (the study's Optuna storage).

    Use as a context manager around everything a driver does to the study; :meth:`acquire` raises a
    one-line ConfigError when another driver holds it.
    """

    def __init__(self, uri: str, name: str, engine_kwargs: dict[str, Any] | None = None) -> None:
        self.uri, self.name = uri, name
        self.engine = sa.create_engine(uri, **(engine_kwargs or {}))
        self.token = secrets.token_hex(16)
        self.took_over: Holder | None = None
        self.lost = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------ taking and giving back
    def acquire(self) -> StudyLease:
        self._ensure_table()
        for _ in range(5):  # another driver may win each race; a few rounds settle it
            now = time.time()
            mine = {"study_name": self.name, "token": self.token, "host": socket.gethostname(),
                    "pid": os.getpid(), "since": now, "heartbeat": now}
            try:
                with self.engine.begin() as conn:
                    conn.execute(_leases.insert().values(**mine))
                break
            except sa.exc.IntegrityError:
                pass
            holder = self.holder()
            if holder is None:
                continue  # released between our insert and our read: try again
            if holder.alive(time.time()):
                raise ConfigError(
                    f"study '{self.name}' is being run by {holder.describe(time.time())}; wait for it to end, "
                    f"or stop it (kill {holder.pid} on {holder.host}) and continue with --resume; "
                    f"a driver silent for {STALE_S:.0f}s is taken over")
            values = {k: v for k, v in mine.items() if k != "study_name"}
            with self.engine.begin() as conn:
                taken = conn.execute(_leases.update().where(_leases.c.study_name == self.name,
                                                            _leases.c.token == holder.token).values(**values))
            if taken.rowcount == 1:
                self.took_over = holder
                break
        else:
            raise ConfigError(f"study '{self.name}': could not take the driver lease (other drivers keep "
                              "starting on it); run one driver per study")
        self._beat = threading.Thread(target=self._heartbeat, name="lorsp-lease", daemon=True)
        self._beat.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=BEAT_S)
            self._beat = None
        try:
            with self.engine.begin() as conn:
                conn.execute(_leases.delete().where(_leases.c.study_name == self.name,
                                                    _leases.c.token == self.token))
        except sa.exc.SQLAlchemyError:
            pass  # the database is gone: the lease goes stale and is taken over
        self.engine.dispose()

    def __enter__(self) -> StudyLease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------ reading and renewing
    def holder(self) -> Holder | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_leases).where(_leases.c.study_name == self.name)).first()
        return Holder(row) if row is not None else None

    def _heartbeat(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                with self.engine.begin() as conn:
                    kept = conn.execute(_leases.update().where(_leases.c.study_name == self.name,
                                                               _leases.c.token == self.token)
                                        .values(heartbeat=time.time()))
                if kept.rowcount == 0:
                    self.lost = True  # taken over after we fell silent for STALE_S: nothing more to renew
                    return
            except sa.exc.SQLAlchemyError:
                continue  # a passing database hiccup; the next beat tries again

    def _ensure_table(self) -> None:
        """Create the lease table once; two drivers creating it at the same moment both go on."""
        try:
            _metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.SQLAlchemyError:
            if not sa.inspect(self.engine).has_table(TABLE):
                raise
