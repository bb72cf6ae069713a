"""`python -m lorsp.ui`: browse the studies' MLflow store in a web browser.

Starts `mlflow server` on 127.0.0.1 over the embedded store of a root folder
(`ROOT/mlflow.db`, artifacts in `ROOT/mlartifacts`) or over the database named by
`--tracking-uri`, waits until it answers, prints the address of each study's trials and Pareto
front (model-training mode, objectives as columns: :mod:`lorsp.mlflow_views`) and keeps serving
until Ctrl-C. A root folder copied or moved from elsewhere is pointed at its own artifacts first
(:mod:`lorsp.relocate`). An `http(s)://` tracking URI is a server already: the studies' addresses
on it are printed and nothing is started.

The server and every process it starts end with this command (:mod:`lorsp.children`): on Ctrl-C,
SIGTERM or SIGHUP (sent to this process alone or to its process group: the server runs in a
session of its own, so only this command receives them, and it stops the server's whole tree and
waits until the port is free; exit 130, 143, 129), on an error, and, through the keeper the server
runs under (Linux's parent-death signal), when this process is killed outright. A port already in
use is one line naming what holds it, exit 2.
"""

from __future__ import annotations

import argparse
import errno
import subprocess
import sys
from pathlib import Path

from lorsp.children import ChildGroup, Stopped, stop_signals
from lorsp.config import ConfigError
from lorsp.mlflow_server import server_command, wait_until_up
from lorsp.ports import bind_error, port_holder
from lorsp.relocate import describe, relocate_store
from lorsp.uris import browser_url, redact, require_secret, scrub


def backend_for(root: str | None, tracking_uri: str | None) -> tuple[str, Path]:
    """(backend store URI, artifacts folder) to serve; ConfigError when there is nothing to serve."""
    base = Path(root or "lorsp-runs").expanduser().resolve()
    if tracking_uri:
        return tracking_uri, base / "mlartifacts"
    db = base / "mlflow.db"
    if not db.is_file():
        raise ConfigError(f"no MLflow store at {db}; run a study first (python -m lorsp.tune) or pass --root DIR")
    return f"sqlite:///{db}", base / "mlartifacts"


def view_lines(tracking_uri: str, base: str, name: str | None) -> list[str]:
    """Each study's trials and Pareto front on the UI at `base` (writing their views into the store);
    a store that refuses costs only these lines, never the UI."""
    from lorsp.mlflow_views import publish

    try:
        views = publish(tracking_uri, base, name)
    except Exception as err:  # MLflow or the database: the UI still runs, only the addresses are missing
        return [f"warning: could not write the studies' views ({scrub(str(err).splitlines()[0], tracking_uri)[:200]})"]
    if not views:
        return [f"  no lorsp study{f' named {name!r}' if name else ''} in this store yet"]
    return [line for view in views for line in (f"  study '{view.name}' trials:       {view.trials_url}",
                                                 f"  study '{view.name}' Pareto front: {view.front_url}")]


def port_problem(port: int) -> str | None:
    """Why the server could not listen on `port` of 127.0.0.1, in one line, or None when it can."""
    err = bind_error(port)
    if err is None:
        return None
    if err.errno == errno.EADDRINUSE:
        holder = port_holder(port)
        return (f"--port {port} on 127.0.0.1 is already in use by {holder or 'a process this user cannot see'}; "
                "stop it or pick another port with --port")
    return f"--port {port}: cannot listen on 127.0.0.1 ({err.strerror}); pick another port with --port"


def _say(text: str) -> None:
    """A last line on stderr, which may be gone (SIGHUP: the terminal closed)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.ui", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--root", help="folder of the embedded stores (default lorsp-runs)")
    where.add_argument("--tracking-uri", help="a tracking database URI to serve, or a running server to open")
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to start")
    parser.add_argument("--name", help="print the addresses of this study only (default: every lorsp study)")
    args = parser.parse_args(argv)
    try:
        with stop_signals():
            return _serve(args)
    except Stopped as stop:
        return stop.exit_code


def _serve(args: argparse.Namespace) -> int:
    try:
        require_secret(args.tracking_uri, "--tracking-uri")
        if args.tracking_uri and args.tracking_uri.startswith(("http://", "https://")):
            print(f"MLflow server already at {redact(args.tracking_uri)}; open it in a browser")
            print("\n".join(view_lines(args.tracking_uri, browser_url(args.tracking_uri), args.name)), flush=True)
            return 0
        backend, artifacts = backend_for(args.root, args.tracking_uri)
        moved = relocate_store(backend)
        if moved:
            print(f"note: {describe(moved, backend)}", flush=True)
        problem = port_problem(args.port)
        if problem:
            raise ConfigError(problem)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    artifacts.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    print(f"starting mlflow server on {redact(backend)} ...", flush=True)
    argv, env = server_command(backend, artifacts, args.port)
    server = ChildGroup(argv, env=env, stdin=subprocess.DEVNULL)
    try:
        views = view_lines(backend, url, args.name)  # while the server starts
        if not wait_until_up(url, server.process, args.timeout):
            code = server.poll()
            server.stop()
            how = f"it exited with code {code}" if code is not None else f"not within {args.timeout:g} s"
            _say(f"error: the mlflow server did not start on {url} ({how}); see its output above")
            return 2
        print(f"MLflow UI: {url}  (Ctrl-C to stop)\n" + "\n".join(views), flush=True)
        code = server.process.wait()
        _say(f"error: the mlflow server on {url} ended by itself (exit code {code}); see its output above")
        return 1
    except Stopped as stop:
        server.stop()
        _say(f"{stop.name}: stopped the mlflow server on {url}")
        raise
    finally:
        server.stop()  # on every way out (an error too); at once when already stopped


if __name__ == "__main__":
    sys.exit(main())
