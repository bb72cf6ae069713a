"""Every benchmark script runs end to end for one tiny round, so none of them can rot unseen.

Not timings (figures are printed by the scripts and read by people, never asserted): each run
must exit 0 and print its table with a row per variant it measured.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "benchmarks"


def _run(*args: str, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_step_benchmark_runs_one_round():
    out = _run(str(BENCH / "step.py"), "--config", "cpu", "--threads", "1", "--sections", "methods", "--rounds", "1",
               "--reps", "1", "--batch-size", "4")
    for variant in ("none", "lorvp", "lorsp", "spike_nvpt"):
        assert f"| {variant}" in out, out


def test_data_benchmark_runs_one_round():
    out = _run(str(BENCH / "data.py"), "--config", "cpu", "--threads", "1", "--batches", "2", "--rounds", "1")
    assert "BatchIterator vs training step" in out and "images/s" in out


@pytest.mark.slow
def test_trials_benchmark_runs_one_trial():
    out = _run(str(BENCH / "trials.py"), "--trials", "1", "--epochs", "1", "--concurrency", "1", "--modes", "inline",
               "--no-pieces", "--cpus", "2")
    row = next(line for line in out.splitlines() if line.startswith("| inline"))
    assert "| 1/1 " in row, out  # the one trial completed and was timed


@pytest.mark.slow
def test_stream_benchmark_runs_on_a_tiny_set(tmp_path):
    out = _run(str(BENCH / "stream.py"), "--sizes", "300", "--image-size", "16", "--probe-images", "8",
               "--root", str(tmp_path))
    assert "in memory" in out and "streamed" in out, out


@pytest.mark.slow
def test_search_benchmark_runs_its_quick_round(tmp_path):
    out = _run(str(BENCH / "search.py"), "--quick", "--plot", str(tmp_path / "search.png"), timeout=600)
    for arm in ("random", "tpe+pareto_asha"):
        assert any(line.startswith(f"| {arm} ") for line in out.splitlines()), out
    assert (tmp_path / "search.png").stat().st_size > 0
