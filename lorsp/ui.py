"""`python -m lorsp.ui`: browse the studies' MLflow store in a web browser.

Starts `mlflow server` on 127.0.0.1 over the embedded store of a root folder
(`ROOT/mlflow.db`, artifacts in `ROOT/mlartifacts`) or over the database named by
`--tracking-uri`, waits until it answers, prints the address and keeps serving until Ctrl-C.
An `http(s)://` tracking URI is a server already: its address is printed and nothing is started.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from lorsp.config import ConfigError
from lorsp.mlflow_server import server_command, wait_until_up
from lorsp.ports import port_free


def backend_for(root: str | None, tracking_uri: str | None) -> tuple[str, Path]:
    """(backend store URI, artifacts folder) to serve; ConfigError when there is nothing to serve."""
    base = Path(root or "lorsp-runs").expanduser().resolve()
    if tracking_uri:
        return tracking_uri, base / "mlartifacts"
    db = base / "mlflow.db"
    if not db.is_file():
        raise ConfigError(f"no MLflow store at {db}; run a study first (python -m lorsp.tune) or pass --root DIR")
    return f"sqlite:///{db}", base / "mlartifacts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.ui", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--root", help="folder of the embedded stores (default lorsp-runs)")
    where.add_argument("--tracking-uri", help="a tracking database URI to serve, or a running server to open")
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to start")
    args = parser.parse_args(argv)
    try:
        if args.tracking_uri and args.tracking_uri.startswith(("http://", "https://")):
            print(f"MLflow server already at {args.tracking_uri}; open it in a browser")
            return 0
        backend, artifacts = backend_for(args.root, args.tracking_uri)
        if not port_free(args.port):
            raise ConfigError(f"--port {args.port}: already in use on 127.0.0.1; pick another with --port")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    artifacts.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    print(f"starting mlflow server on {backend} ...", flush=True)
    process = subprocess.Popen(server_command(backend, artifacts, args.port))
    try:
        if not wait_until_up(url, process, args.timeout):
            code = process.poll()
            if code is None:
                process.terminate()
            print(f"error: mlflow server did not start on {url} (exit code {process.poll()}); see its output above",
                  file=sys.stderr)
            return 2
        print(f"MLflow UI: {url}  (Ctrl-C to stop)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
        return 0


if __name__ == "__main__":
    sys.exit(main())
