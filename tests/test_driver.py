"""How a study driver meets real clusters: one driver per study, a clean stop on a signal to its whole
process group, impossible requests and broken data refused before anything is written. Real drivers
(`python -m lorsp.tune` subprocesses), a real embedded Ray, real Optuna and MLflow SQLite stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from lorsp.config import load_study
from tests.conftest import QUICKSTART, REPO, wait_until

pytestmark = pytest.mark.slow

EPOCHS = 12


def _driver(root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lorsp.tune", "--space", str(QUICKSTART), "--name", name, "--max-concurrent", "1",
            "--set", "data.max_train=320", "--set", "data.batch_size=40", "--set", f"train.epochs={EPOCHS}",
            "--set", f"tracking.root={root}", *extra]


def _trials(root: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}").trials
    except KeyError:
        return []


def _mlflow_runs(root: Path, name: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_a_second_driver_is_refused_and_takes_over_once_the_first_is_killed(tmp_path):
    """Driver A runs; B (with --resume, and without) is refused in one line naming A, and never
    touches A's live trials. Then A is killed with SIGKILL mid-trial: B --resume takes over its lease
    at once (A's pid is gone), finishes the interrupted trial, and the study holds exactly
    num_samples trials on which Optuna and MLflow agree.

    A is paused (SIGSTOP) while B tries, so that A's trial is RUNNING however slowly B starts: a
    paused driver is alive, and its lease is fresh for lorsp.lease.STALE_S seconds."""
    root = tmp_path / "runs"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    a = subprocess.Popen(_driver(root, "shared", "--num-samples", "2"), cwd=REPO, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: any(t.state.name == "RUNNING" and t.user_attrs.get("epochs_done", 0) >= 1
                              for t in _trials(root, "shared")), a)
        os.kill(a.pid, signal.SIGSTOP)
        for extra in (["--resume"], []):
            b = subprocess.run(_driver(root, "shared", "--num-samples", "2", *extra), cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=120)
            assert b.returncode == 2, b.stdout + b.stderr
            (line,) = b.stderr.strip().splitlines()
            assert line.startswith("error: study 'shared' is being run by a driver on") and f"pid {a.pid}" in line
            assert "starting an embedded local Ray" not in b.stdout
        assert [t.state.name for t in _trials(root, "shared")].count("RUNNING") == 1  # A's trial, untouched
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    b = subprocess.run(_driver(root, "shared", "--num-samples", "2", "--resume"), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    assert "taking over from a driver on" in b.stdout and f"(pid {a.pid}," in b.stdout
    trials = _trials(root, "shared")
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state.name == "COMPLETE" and t.user_attrs["epochs_done"] == EPOCHS for t in trials)
    runs = _mlflow_runs(root, "shared")
    children = {int(r.data.tags["optuna_trial"]): r.info.status
                for r in runs if r.data.tags.get("lorsp.role") == "trial"}
    assert children == {0: "FINISHED", 1: "FINISHED"}
    assert [r.info.status for r in runs if r.data.tags.get("lorsp.role") != "trial"] == ["FINISHED"]  # one parent


@pytest.mark.parametrize("sig", [signal.SIGHUP])
def test_a_signal_to_the_drivers_process_group_stops_the_study_cleanly(tmp_path, sig):
    """What a closing terminal (SIGHUP), GNU timeout or a scheduler (SIGTERM, held with --resume in
    tests/test_tune.py) send: the whole group, while the embedded Ray lives in a session of its own."""
    root = tmp_path / "runs"
    proc = subprocess.Popen(_driver(root, "hup", "--num-samples", "1"), cwd=REPO, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(lambda: any(t.state.name == "RUNNING" and t.user_attrs.get("epochs_done", 0) >= 1
                              for t in _trials(root, "hup")), proc)
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, (proc.returncode, out[-2000:], err[-2000:])
    assert [t.state.name for t in _trials(root, "hup")] == ["WAITING"]
    assert not [r for r in _mlflow_runs(root, "hup") if r.info.status == "RUNNING"]
    (hint,) = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert hint.endswith("--resume")


def _refused(tmp_path: Path, name: str, overrides: list[str]) -> tuple[str, float]:
    from lorsp.tune import run_study

    study = load_study(QUICKSTART, [f"tracking.root={tmp_path / 'runs'}", f"name={name}", *overrides])
    from lorsp.tracking.callback import tune_callbacks

    tick = time.perf_counter()
    with pytest.raises(Exception) as err:
        run_study(study, callbacks=lambda: tune_callbacks(study))
    return str(err.value), time.perf_counter() - tick


def test_impossible_requests_and_broken_data_are_refused_and_leave_no_stub(tmp_path, local_ray):
    line, seconds = _refused(tmp_path, "greedy", ["resources.cpus_per_worker=64"])
    assert "resources.cpus_per_worker 64" in line and "\n" not in line and seconds < 30
    line, _ = _refused(tmp_path, "nodata", ["data.dataset=parquet:/nonexistent/shards"])
    assert "/nonexistent/shards" in line
    for name in ("greedy", "nodata"):
        assert _trials(tmp_path / "runs", name) == [] and _mlflow_runs(tmp_path / "runs", name) == []
        with pytest.raises(KeyError):
            optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    # The corrected command then starts the study as new (no "already exists ... pass --resume").
    from lorsp.tune import run_study

    fixed = load_study(QUICKSTART, [f"tracking.root={tmp_path / 'runs'}", "name=greedy", "search.num_samples=1",
                                    "train.epochs=1", "data.max_train=80"])
    (record,) = run_study(fixed).records
    assert record.state == "COMPLETE"

