"""Shared fixtures: small study files and a tiny backbone, so tests run in seconds on 2 CPU cores."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
#: The methods lorsp ships (a test's plugin method, once registered, is in the registry too).
BUILTIN_METHODS = ("none", "pad", "lorvp", "lorsp", "spike_nvpt")

# Keep torch from spreading one test over every core while Ray runs beside it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never download: say so before huggingface_hub reads it (at its import), so a test of the
# offline error path fails at once instead of waiting on the network's timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


# ---------------------------------------------------------------- independent references (tests only)
def brute_force_front(points: list[list[float]], modes: list[str]) -> set[int]:
    """Indices no other point dominates, by the textbook definition."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    pts = [[s * v for s, v in zip(sign, p)] for p in points]
    front = set()
    for i, p in enumerate(pts):
        dominated = any(all(q[k] <= p[k] for k in range(len(p))) and any(q[k] < p[k] for k in range(len(p)))
                        for j, q in enumerate(pts) if j != i)
        if not dominated:
            front.add(i)
    return front


def inclusion_exclusion_hv(points: list[list[float]], modes: list[str], ref: list[float]) -> float:
    """Hypervolume as the volume of a union of boxes, by inclusion-exclusion (exact, exponential)."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    pts = [[s * v for s, v in zip(sign, p)] for p in points]
    r = [s * v for s, v in zip(sign, ref)]
    total = 0.0
    for size in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, size):
            corner = [max(p[k] for p in subset) for k in range(len(r))]
            volume = float(np.prod([max(0.0, r[k] - corner[k]) for k in range(len(r))]))
            total += (-1) ** (size + 1) * volume
    return total


def lif_spike_counts(current: torch.Tensor, T: int, thr: float, tau: float) -> torch.Tensor:
    """A plain LIF, written from docs/methods.md: charge ``h = v + (I - v)/tau``, fire at ``h >= V_th``,
    hard reset to 0; returns the spike count of every neuron over T steps (the tests' independent
    reference for lorsp's fused neurons)."""
    import torch

    v = torch.zeros_like(current)
    count = torch.zeros_like(current)
    for _ in range(T):
        h = v + (current - v) / tau
        fired = h >= thr
        count += fired
        v = torch.where(fired, torch.zeros_like(h), h)
    return count


@pytest.fixture(scope="session")
def local_ray():
    """One embedded Ray (what `python -m lorsp.tune` starts) for every in-process study of the session.

    Started by the first test that asks for it and shut down at the end: starting one per module
    cost 6-10 s each on 2 cores. Four logical CPUs: the streaming tests run a 2-worker trial beside
    its decode bundle; every other study caps its concurrency with `search.max_concurrent`.
    """
    from lorsp.ray_session import init_ray, shutdown_ray

    init_ray(None, num_cpus=4)
    yield
    shutdown_ray()


@pytest.fixture(scope="session")
def tracked_study(tmp_path_factory: pytest.TempPathFactory, local_ray):
    """The small study of tests/tracked_study.py, run once per session for the tracking and export
    tests, on the session's Ray; its MLflow servers live until the session ends."""
    from tests.tracked_study import run_tracked_study

    ctx = run_tracked_study(tmp_path_factory.mktemp("tracking-study"))
    yield ctx
    for server in [ctx["server"], *ctx["servers"]]:
        server.kill()


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 400.0,
               what: str = "the study never reached the point to interrupt") -> None:
    """Poll `ready()` every half second while the driver `proc` runs (a store that is not created yet
    counts as not ready); on its end or after `timeout`, kill its group and fail with its output."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if ready():
                return
        except Exception:
            pass  # the database or the study is not there yet
        time.sleep(0.5)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    raise AssertionError(f"{what} (driver exit code {proc.returncode}): {(out or '')[-2000:]} {(err or '')[-3000:]}")
