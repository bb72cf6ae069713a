"""Shared fixtures: small study files and a tiny backbone, so tests run in seconds on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"

# Keep torch from spreading one test over every core while Ray runs beside it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def write_study(tmp_path: Path):
    """Write a study dict (merged over the quickstart file) to YAML and return its path."""

    def write(overrides: dict | None = None, name: str = "study.yaml") -> Path:
        raw = yaml.safe_load(QUICKSTART.read_text())
        for key, value in (overrides or {}).items():
            node = raw
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write
