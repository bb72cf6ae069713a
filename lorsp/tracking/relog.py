"""`python -m lorsp.tracking relog`: rebuild a study's MLflow runs from its Optuna storage (after
the tracking server was down). No Ray."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from lorsp.config import ConfigError
from lorsp.tracking.record import record_study
from lorsp.tracking.store import one_line
from lorsp.uris import redact, scrub


def relog(name: str, storage: str | None = None, tracking: str | None = None,
          root: str | None = None) -> dict[str, Any]:
    """Rebuild a stored study's parent and child runs in MLflow from its Optuna storage."""
    from lorsp.search import open_stored_study, trial_records

    study, opened, _ = open_stored_study(name, storage, root)
    records = trial_records(study, opened)
    return record_study(study, records, tracking)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.tracking", description="MLflow recording of lorsp studies.")
    commands = parser.add_subparsers(dest="command", required=True)
    re_log = commands.add_parser("relog", help="rebuild a study's MLflow runs from its Optuna storage "
                                               "(after the tracking server was down)")
    re_log.add_argument("--name", required=True, help="study name")
    re_log.add_argument("--storage", help="Optuna RDB URI (default: sqlite ROOT/optuna.db)")
    re_log.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's, else sqlite ROOT/mlflow.db)")
    re_log.add_argument("--root", help="folder of the embedded stores (default lorsp-runs)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        done = relog(args.name, args.storage, args.tracking_uri, args.root)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the store answered but refused: still one line
        reason = scrub(one_line(err), args.tracking_uri, args.storage)
        print(f"error: re-logging study '{args.name}' failed: {reason}", file=sys.stderr)
        return 2
    print(f"re-logged study '{args.name}' to {redact(done['uri'])}: parent run {done['parent_run_id']}, "
          f"{done['created']} child runs created, {done['updated']} updated; Pareto front: trials "
          f"{', '.join(map(str, done['front'])) or 'none'}; hypervolume {done['hypervolume']:.6g}")
    return 0
