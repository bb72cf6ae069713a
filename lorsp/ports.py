"""Free TCP ports for the servers lorsp starts on this machine (an embedded Ray, an MLflow server).

Standard library only, so that importing it costs nothing: `lorsp.tune` picks its embedded Ray's
GCS port here, `lorsp.ui` checks the port it was asked for (and names what holds it when it is
taken), and `cluster/local_cluster.py` picks every port of its nodes and services here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port(host: str = "") -> int:
    """A port the OS reports free now (on every interface by default, so on loopback too).

    It is free when asked, not reserved: another process may take it before the server binds it, so
    callers that start servers handle a failed start (the local cluster retries a node on fresh ports).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bind_error(port: int, host: str = "127.0.0.1") -> OSError | None:
    """Why a server could not bind `port` on `host` now (EADDRINUSE: taken; EACCES: a privileged
    port), or None when it could (a port the user chose, checked before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return err
    return None


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `port` on `host` now."""
    return bind_error(port, host) is None


_LISTEN = "0A"  # the TCP state column of /proc/net/tcp


def _socket_inodes(port: int) -> list[int]:
    """Inodes of this machine's TCP sockets bound to local `port` (listening ones first), from
    /proc/net/tcp and tcp6; empty where there is no /proc."""
    listening, other = [], []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path("/proc/net", table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()  # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) < 10 or int(fields[1].rpartition(":")[2], 16) != port or fields[9] == "0":
                continue
            (listening if fields[3] == _LISTEN else other).append(int(fields[9]))
    return listening + other


def _command(pid: int, limit: int = 160) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    # A folder is noise here: "python -m uvicorn --log-config uvicorn_log_config.yaml ..." says what it is.
    text = " ".join(os.path.basename(a) if a.startswith("/") else a
                    for a in (b.decode(errors="replace") for b in argv)) or "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def port_holder(port: int) -> str | None:
    """What holds TCP `port` on this machine, as "pid 1234 (its command line)", found through
    /proc/net/tcp and the processes' open files; None where that cannot be told (no /proc, or a
    process of another user, whose files this one cannot read)."""
    inodes = _socket_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]": rank for rank, inode in enumerate(inodes)}
    holders: dict[int, int] = {}  # pid -> rank of the best socket it holds
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"{entry.path}/fd")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        with fds:
            for fd in fds:
                try:
                    rank = wanted.get(os.readlink(fd.path))
                except OSError:
                    continue
                if rank is not None:
                    pid = int(entry.name)
                    holders[pid] = min(rank, holders.get(pid, rank))
    if not holders:
        return None
    pid = min(holders, key=lambda p: (holders[p], p))
    more = f" and {len(holders) - 1} other process{'es' if len(holders) > 2 else ''}" if len(holders) > 1 else ""
    return f"pid {pid} ({_command(pid)}){more}"
