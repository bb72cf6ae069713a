"""A study folder that was copied or moved (cluster head -> laptop) keeps its artifacts and checkpoints.

MLflow records absolute artifact locations: a run's artifacts live at ``file:///ROOT/mlartifacts/
<study>/<run>/artifacts``, written into ``ROOT/mlflow.db``. Neither alternative survives a move:
MLflow resolves a relative location against the working directory when the experiment is created
(so it is stored absolute anyway), and an ``mlflow-artifacts:`` location needs a running server
for every upload (the embedded store has none during a study). So the embedded layout keeps
absolute locations and this module puts them right when the store is opened somewhere else:

* :func:`relocate_store` rewrites, in one transaction, every stored artifact URI that points at
  another folder's ``mlartifacts/`` so that it points at the ``mlartifacts/`` beside the database,
  but only where that folder holds the experiment's artifacts (a copy brought them along). A
  store opened where it was written is never touched, so a running study is never rewritten.
* :func:`under_root` finds a recorded checkpoint path (Optuna's ``checkpoint_path``, the MLflow
  tag of the same name) under the study's current root when the recorded one is gone.

Standard library only: the store is SQLite, and nothing here needs MLflow.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ARTIFACTS_DIR = "mlartifacts"
_MARK = f"/{ARTIFACTS_DIR}/"

#: (table, column) of every artifact URI an MLflow 3 SQL store keeps; tables a schema lacks are skipped.
URI_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)
#: A trace keeps its artifact location as a tag.
TRACE_LOCATION_TAG = "mlflow.artifactLocation"


@dataclass(frozen=True)
class Relocation:
    """One rewritten prefix: `old` -> `new` in `rows` stored URIs."""

    old: str
    new: str
    rows: int


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store (a server, PostgreSQL)."""
    if not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser().resolve()


def moved_prefixes(db: sqlite3.Connection, here: Path) -> dict[str, str]:
    """{old prefix: new prefix} for experiments whose artifacts were written under another folder's
    ``mlartifacts/`` and are now found under ``here/mlartifacts/`` (`here`: the database's folder)."""
    folder = here / ARTIFACTS_DIR
    out: dict[str, str] = {}
    for (location,) in db.execute("SELECT artifact_location FROM experiments WHERE artifact_location IS NOT NULL"):
        if not (location.startswith("file:") or location.startswith("/")) or _MARK not in location:
            continue
        cut = location.rindex(_MARK) + len(_MARK)
        old = location[:cut]
        new = (folder.as_uri() if location.startswith("file:") else str(folder)) + "/"
        if old == new:
            continue  # written here: nothing moved
        tail = location[cut:]
        if (folder / (urllib.parse.unquote(tail) if location.startswith("file:") else tail)).is_dir():
            out[old] = new
    return out


def _tables(db: sqlite3.Connection) -> set[str]:
    return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def rewrite(db: sqlite3.Connection, old: str, new: str) -> int:
    """Replace the prefix `old` by `new` in every stored artifact URI; returns the rows changed."""
    tables = _tables(db)
    rows = 0
    for table, column in URI_COLUMNS:
        if table in tables:
            cursor = db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (fixed names)
                                f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old), old))
            rows += cursor.rowcount
    if "trace_tags" in tables:
        cursor = db.execute("UPDATE trace_tags SET value = ? || substr(value, ?) "
                            "WHERE key = ? AND substr(value, 1, ?) = ?",
                            (new, len(old) + 1, TRACE_LOCATION_TAG, len(old), old))
        rows += cursor.rowcount
    return rows


def relocate_store(uri: str) -> list[Relocation]:
    """Point a moved or copied embedded MLflow store at the artifacts beside it; [] when nothing moved.

    Only a SQLite store is touched (a server or PostgreSQL keeps its own artifact root), and only
    where the artifacts really are beside the database; all rewrites happen in one transaction.
    """
    file = sqlite_file(uri)
    if file is None or not file.is_file():
        return []
    db = sqlite3.connect(str(file), timeout=60)
    try:
        if "experiments" not in _tables(db):
            return []
        with db:  # one transaction: every URI of a prefix moves, or none does
            return [Relocation(old, new, rewrite(db, old, new)) for old, new in moved_prefixes(db, file.parent).items()]
    finally:
        db.close()


def describe(relocations: list[Relocation], uri: str) -> str:
    """One line for the user: what was rewritten where."""
    moves = "; ".join(f"{r.old} -> {r.new} ({r.rows} locations)" for r in relocations)
    return f"the study folder was moved or copied: artifact locations in {uri} now point beside it: {moves}"


def under_root(path: str | None, root: Path) -> str | None:
    """`path` when it exists (or is remote, or empty); else the same file or folder under `root`.

    A recorded path such as ``/old/lorsp-runs/ray/<experiment>/<trial>/checkpoint_000019`` is found
    as ``ROOT/ray/<experiment>/<trial>/checkpoint_000019``: the longest tail of the path that
    exists under `root` wins. When no tail does, `path` comes back unchanged.
    """
    if not path or "://" in path:
        return path
    recorded = Path(path)
    if recorded.exists():
        return path
    parts = recorded.parts[1:] if recorded.is_absolute() else recorded.parts
    for start in range(len(parts)):
        candidate = root.joinpath(*parts[start:])
        if candidate.exists():
            return str(candidate)
    return path
