"""Free TCP ports for the servers lorsp starts on this machine (an embedded Ray, an MLflow server).

Standard library only, so that importing it costs nothing: `lorsp.tune` picks its embedded Ray's
GCS port here, `lorsp.ui` checks the port it was asked for, and `cluster/local_cluster.py` picks
every port of its nodes and services here.
"""

from __future__ import annotations

import socket


def free_port(host: str = "") -> int:
    """A port the OS reports free now (on every interface by default, so on loopback too).

    It is free when asked, not reserved: another process may take it before the server binds it, so
    callers that start servers handle a failed start (the local cluster retries a node on fresh ports).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `port` on `host` now (a port the user chose, checked before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
