"""The search with a real local Ray, a real Optuna RDB storage and real (tiny) Ray Train trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from lorsp.config import ConfigError, load_study
from lorsp.pareto import dominates
from lorsp.search import INTERRUPTED, rdb_storage, storage_uri
from tests.conftest import QUICKSTART, REPO

pytestmark = pytest.mark.slow

SMALL = ["train.epochs=2", "data.max_train=160", "data.batch_size=40"]


def _study(tmp_path: Path, name: str, extra: list[str]):
    return load_study(QUICKSTART, [*SMALL, f"tracking.root={tmp_path / 'runs'}", f"name={name}", *extra])


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from lorsp.tune import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def test_quickstart_study_end_to_end_pareto(tmp_path, local_ray):
    from lorsp.tune import run_study

    study = _study(tmp_path, "e2e", ["search.num_samples=4", "search.max_concurrent=2"])
    records = run_study(study)
    assert len(records) == 4
    complete = [r for r in records if r.state == "COMPLETE" and r.full_budget]
    assert len(complete) == 4, [(r.state, r.full_budget, r.attrs) for r in records]
    objectives = [(o.metric, o.mode) for o in study.objectives]
    modes = [m for _, m in objectives]
    front = [r for r in records if r.pareto]
    assert front, "the Pareto front must not be empty"
    vec = {r.number: [r.values[m] for m, _ in objectives] for r in complete}
    for r in complete:  # independent brute-force check of non-domination
        dominated = any(dominates(vec[o.number], vec[r.number], modes) for o in complete if o is not r)
        assert r.pareto == (not dominated)
    for r in complete:
        assert 0.0 <= r.values["val_acc"] <= 1.0 and "test_acc" in r.values
        assert r.attrs["epochs_done"] == 2
        # One-worker trials train inline; their stored checkpoint path reaches Optuna as Ray Train's does.
        assert (Path(r.attrs["checkpoint_path"]) / "prompt.safetensors").is_file(), r.attrs
    # Two trials ran at a time: their (start, end) intervals overlap somewhere.
    assert len({r.attrs.get("tune_trial_id") for r in records}) == 4


def test_inline_trial_whose_process_dies_resumes_from_its_checkpoint(tmp_path, local_ray):
    import ray.tune

    from lorsp.tune import run_study

    study = _study(tmp_path, "killed", ["search.num_samples=1", "search.max_concurrent=1", "train.epochs=3"])
    epochs: list[int] = []
    pids: list[int] = []
    killed: list[int] = []

    class KillAfterFirstCheckpoint(ray.tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            epochs.append(int(result["epoch"]))
            pids.append(int(result["pid"]))

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            if not killed:  # the trial's process dies once its epoch-1 checkpoint is stored
                killed.append(int(trial.last_result["pid"]))
                os.kill(killed[0], signal.SIGKILL)

    (record,) = run_study(study, callbacks=[KillAfterFirstCheckpoint()])
    assert killed and pids[0] == killed[0]
    assert epochs == [1, 2, 3], epochs  # continued after epoch 1, never restarted from zero
    assert pids[-1] != killed[0]  # a new process finished the trial
    assert record.state == "COMPLETE" and record.full_budget and record.attrs["epochs_done"] == 3


def test_two_ddp_workers_see_different_data(tmp_path, local_ray):
    import ray.tune

    from lorsp.tune import run_study

    study = _study(tmp_path, "ddp", ["search.num_samples=1", "search.max_concurrent=1",
                                     "resources.workers_per_trial=2", "resources.cpus_per_worker=1"])
    seen: dict[str, dict] = {}

    class Keep(ray.tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen[trial.trial_id] = dict(result)

    records = run_study(study, callbacks=[Keep()])
    assert records[0].state == "COMPLETE" and records[0].full_budget
    (result,) = seen.values()
    assert result["shard_digest_0"] != result["shard_digest_1"]
    # Each rank trains on half of the (padded) training set.
    assert result["epoch"] == 2


def test_asha_stopped_trials_never_enter_the_front(tmp_path, local_ray):
    from lorsp.tune import run_study

    # ASHA on trainable_params (min) makes the stops deterministic: with trials one at a time, a
    # trial whose rank gives more parameters than the first trial's is cut at the first rung.
    study = _study(tmp_path, "asha", [
        "search.num_samples=4", "search.max_concurrent=1", "search.sampler=random", "search.seed=3",
        "train.epochs=3",
        "search.scheduler={type: asha, metric: trainable_params, mode: min, grace_period: 1, reduction_factor: 2}",
    ])
    records = run_study(study)
    stopped = [r for r in records if r.state == "COMPLETE" and not r.full_budget]
    assert stopped, f"expected ASHA to stop a trial: {[(r.params, r.attrs) for r in records]}"
    for r in stopped:
        assert r.pareto_rank is None and not r.pareto
        assert r.attrs["epochs_done"] < 3
    assert any(r.pareto for r in records if r.full_budget)


def test_bad_space_fails_before_any_trial(write_study, tmp_path):
    path = write_study({"search.sampler": "annealing", "tracking.root": str(tmp_path / "runs")})
    tick = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lorsp.tune", "--space", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "search.sampler" in proc.stderr and "Traceback" not in proc.stderr
    assert "starting an embedded local Ray" not in proc.stdout
    assert time.perf_counter() - tick < 60
    # A knob with an empty range is caught by the same validation.
    with pytest.raises(ConfigError, match="empty range"):
        load_study(write_study({"space.lr": {"type": "float", "low": 0.1, "high": 0.01}}))


def test_existing_study_needs_resume(tmp_path):
    study = _study(tmp_path, "twice", ["search.num_samples=2"])
    from lorsp.search import prepare_study

    storage = rdb_storage(storage_uri(study))
    assert prepare_study(study, storage, resume=False) == (0, 2)
    with pytest.raises(ConfigError, match="--resume"):
        prepare_study(study, storage, resume=False)
    other = _study(tmp_path, "other", ["search.num_samples=2"])
    assert prepare_study(other, storage, resume=False) == (0, 2)  # different names never mix


def test_interrupted_study_resumes_without_loss_or_rerun(tmp_path):
    root = tmp_path / "runs"
    args = [sys.executable, "-m", "lorsp.tune", "--space", str(QUICKSTART), "--name", "resumable",
            "--num-samples", "4", "--max-concurrent", "1", *[a for kv in SMALL for a in ("--set", kv)],
            "--set", f"tracking.root={root}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines = []
    deadline = time.time() + 400
    for line in proc.stdout:
        lines.append(line)
        if "[2/4 ended" in line or time.time() > deadline:
            break
    assert any("[2/4 ended" in line for line in lines), "".join(lines[-30:])
    proc.send_signal(signal.SIGINT)  # Ctrl-C on the driver
    try:
        proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    storage = rdb_storage(f"sqlite:///{root / 'optuna.db'}")
    before = {t.number: (t.params, t.values) for t in optuna.load_study(study_name="resumable", storage=storage).trials
              if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(before) >= 2

    done = subprocess.run([*args, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{len(before)} trials already finished" in done.stdout
    trials = optuna.load_study(study_name="resumable", storage=storage).trials
    finished = [t for t in trials if not t.user_attrs.get(INTERRUPTED)]
    assert len(finished) == 4  # the total reaches num_samples
    for number, (params, values) in before.items():  # nothing finished was lost or re-run
        assert trials[number].params == params and trials[number].values == values
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    assert np.isfinite([v for t in finished for v in t.values]).all()
