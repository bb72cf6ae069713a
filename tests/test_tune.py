"""The search with a real local Ray, a real Optuna RDB storage and real (tiny) Ray Train trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from lorsp.config import ConfigError, load_study
from lorsp.search import rdb_storage, storage_uri
from tests.conftest import QUICKSTART, REPO, brute_force_front, wait_until

pytestmark = pytest.mark.slow

SMALL = ["train.epochs=2", "data.max_train=160", "data.batch_size=40"]


def _study(tmp_path: Path, name: str, extra: list[str]):
    return load_study(QUICKSTART, [*SMALL, f"tracking.root={tmp_path / 'runs'}", f"name={name}", *extra])


def test_quickstart_study_end_to_end_pareto(tmp_path, local_ray):
    from lorsp.tune import run_study

    study = _study(tmp_path, "e2e", ["search.num_samples=4", "search.max_concurrent=2"])
    finished = []

    def finish(run):  # recording the front happens under the lease: a second driver is still refused
        from lorsp.lease import StudyLease
        from lorsp.search import engine_kwargs

        with pytest.raises(ConfigError, match="is being run by"):
            StudyLease(storage_uri(study), study.name, engine_kwargs(storage_uri(study))).acquire()
        finished.append(len(run.records))

    records = run_study(study, finish=finish).records
    assert finished == [4]
    assert len(records) == 4
    complete = [r for r in records if r.state == "COMPLETE"]
    assert len(complete) == 4, [(r.state, r.error) for r in records]
    # The quickstart's method knob is balanced: four trials, one per method, each with its own knobs.
    assert sorted(r.params["method"] for r in records) == ["lorsp", "lorvp", "none", "pad"]
    knobs = {r.params["method"]: set(r.params) - {"method"} for r in records}
    assert knobs["none"] == {"lr"} and knobs["lorvp"] == {"rank", "lr"} and knobs["pad"] == {"pad_width", "lr"}
    objectives = [(o.metric, o.mode) for o in study.objectives]
    modes = [m for _, m in objectives]
    front = [r for r in records if r.pareto]
    assert front, "the Pareto front must not be empty"
    points = [[r.values[m] for m, _ in objectives] for r in complete]
    expected = {complete[i].number for i in brute_force_front(points, modes)}  # independent reference
    assert {r.number for r in front} == expected
    stored = optuna.load_study(study_name="e2e", storage=storage_uri(study))
    assert {t.number for t in stored.best_trials} == {r.number for r in front}  # Optuna's own front
    for r in complete:
        assert 0.0 <= r.values["val_acc"] <= 1.0 and "test_acc" in r.values
        assert r.epochs_done == 2
        # One-worker trials train inline; their stored checkpoint path reaches Optuna as Ray Train's does.
        assert (Path(r.checkpoint_path) / "prompt.safetensors").is_file(), r
    assert len({r.tune_trial_id for r in records}) == 4


def test_each_method_samples_lr_from_its_own_range_in_the_stored_study(tmp_path, local_ray):
    """`per_method`: the probe's trials draw lr from the probe's range, the prompts' from theirs
    (ranges that do not overlap, so a value drawn from the wrong one would show); Optuna stores the
    probe's as its own parameter, and every trial's record and config read `lr`."""
    from optuna.distributions import FloatDistribution

    from lorsp.tune import run_study

    study = _study(tmp_path, "per-method", [
        "train.epochs=1", "search.num_samples=4", "search.max_concurrent=2",
        "space.method={type: categorical, choices: [lorvp, none], balanced: true}",
        "space.lr={type: float, low: 1.0e-3, high: 0.05, log: true, default: 0.01,"
        " per_method: {none: {low: 0.2, high: 1.0, default: 0.5}}}",
    ])
    records = run_study(study).records
    assert [r.state for r in records] == ["COMPLETE"] * 4, [(r.state, r.error) for r in records]
    stored = optuna.load_study(study_name="per-method", storage=storage_uri(study)).trials
    by_method: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in stored:
        by_method.setdefault(t.params["method"], []).append(t)
    assert sorted(by_method) == ["lorvp", "none"] and all(len(ts) == 2 for ts in by_method.values())
    for t in by_method["none"]:
        assert set(t.params) == {"method", "lr@none"} and 0.2 <= t.params["lr@none"] <= 1.0
        assert t.distributions["lr@none"] == FloatDistribution(0.2, 1.0, log=True)
    for t in by_method["lorvp"]:
        assert set(t.params) == {"method", "rank", "lr"} and 1.0e-3 <= t.params["lr"] <= 0.05
        assert t.distributions["lr"] == FloatDistribution(1.0e-3, 0.05, log=True)
    for r in records:  # what the Pareto tables, MLflow and exports read, and what the trial trained with
        sampled = stored[r.number].params
        assert r.params["lr"] == sampled.get("lr", sampled.get("lr@none")) and "lr@none" not in r.params
        trained = yaml.safe_load((Path(r.checkpoint_path) / "config.yaml").read_text())
        assert trained["train"]["lr"] == r.params["lr"]


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

    (record,) = run_study(study, callbacks=[KillAfterFirstCheckpoint()]).records
    assert killed and pids[0] == killed[0]
    assert epochs == [1, 2, 3], epochs  # continued after epoch 1, never restarted from zero
    assert pids[-1] != killed[0]  # a new process finished the trial
    assert record.state == "COMPLETE" and record.epochs_done == 3


def test_two_ddp_workers_see_different_data(tmp_path, local_ray):
    import ray.tune

    from lorsp.tune import run_study

    study = _study(tmp_path, "ddp", ["search.num_samples=1", "search.max_concurrent=1",
                                     "resources.workers_per_trial=2", "resources.cpus_per_worker=1"])
    seen: dict[str, dict] = {}

    class Keep(ray.tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen[trial.trial_id] = dict(result)

    records = run_study(study, callbacks=[Keep()]).records
    assert records[0].state == "COMPLETE"
    (result,) = seen.values()
    assert result["shard_digest_0"] != result["shard_digest_1"]
    # Each rank trains on half of the (padded) training set.
    assert result["epoch"] == 2


def test_asha_stopped_trials_are_pruned_and_never_enter_the_front(tmp_path, local_ray):
    from lorsp.tune import run_study

    # ASHA on trainable_params (min) makes the stops deterministic: with trials one at a time, a
    # trial whose rank gives more parameters than the first trial's is cut at the first rung.
    study = _study(tmp_path, "asha", [
        "search.num_samples=4", "search.max_concurrent=1", "search.sampler=random", "search.seed=3",
        "train.epochs=3", "prompt.method=lorsp",
        "search.scheduler={type: asha, metric: trainable_params, mode: min, grace_period: 1, reduction_factor: 2}",
    ])
    records = run_study(study).records
    stopped = [r for r in records if r.state == "PRUNED"]
    assert stopped, f"expected ASHA to stop a trial: {[(r.params, r.state, r.epochs_done) for r in records]}"
    stored = optuna.load_study(study_name="asha", storage=storage_uri(study))
    for r in stopped:
        assert r.pareto_rank is None and not r.pareto
        assert r.epochs_done < 3
        assert stored.trials[r.number].values is None  # the sampler never sees partial values as results
        assert 0.0 <= r.values["val_acc"] <= 1.0  # ... which stay readable as attributes
    assert {t.number for t in stored.best_trials} == {r.number for r in records if r.pareto}
    assert any(r.pareto for r in records if r.state == "COMPLETE")


def test_pareto_asha_stops_are_pruned_killed_at_their_rung_and_never_enter_the_front(tmp_path, local_ray):
    """The Pareto-aware scheduler's stops end as ASHA's do. Its objectives here are both parameter
    counts (set by the sampled rank, not by training), so which trial a rung stops is deterministic."""
    import mlflow

    from lorsp.tracking.callback import tune_callbacks
    from lorsp.tune import run_study

    study = _study(tmp_path, "pasha", [
        "search.num_samples=4", "search.max_concurrent=1", "search.sampler=random", "search.seed=3",
        "train.epochs=3", "prompt.method=lorsp",
        "objectives=[{metric: trainable_params, mode: min}, {metric: prompt_params, mode: min}]",
        "search.scheduler={type: pareto_asha, grace_period: 1, reduction_factor: 2}",
    ])
    records = run_study(study, callbacks=tune_callbacks(study)).records
    stopped = [r for r in records if r.state == "PRUNED"]
    assert stopped, f"expected a stop: {[(r.params, r.state, r.epochs_done) for r in records]}"
    stored = optuna.load_study(study_name="pasha", storage=storage_uri(study))
    assert {t.number for t in stored.best_trials} == {r.number for r in records if r.pareto}
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = {int(r.data.tags["optuna_trial"]): r for r in client.search_runs(
        [client.get_experiment_by_name("pasha").experiment_id], "tags.`lorsp.role` = 'trial'")}
    for r in stopped:
        assert stored.trials[r.number].values is None and not r.pareto and r.epochs_done in (1, 2)
        assert runs[r.number].info.status == "KILLED"
        assert runs[r.number].data.tags["end_reason"] == f"stopped early by the scheduler after epoch {r.epochs_done}"


def test_resumed_study_proposes_new_configurations(tmp_path, local_ray):
    from lorsp.tune import run_study

    study = _study(tmp_path, "again", ["search.num_samples=2", "search.max_concurrent=1", "train.epochs=1",
                                       "prompt.method=lorsp"])
    run_study(study)
    more = study.model_copy(update={"search": study.search.model_copy(update={"num_samples": 4})})
    records = run_study(more, resume=True).records
    assert [r.number for r in records] == [0, 1, 2, 3] and all(r.state == "COMPLETE" for r in records)
    configs = {tuple(sorted(r.params.items())) for r in records}
    assert len(configs) == 4, [r.params for r in records]


def test_diverging_trials_fail_once_in_one_line(tmp_path, local_ray, capsys):
    import mlflow
    import ray.tune

    from lorsp.tracking import tracking_uri
    from lorsp.tracking.callback import tune_callbacks
    from lorsp.tune import run_study

    study = _study(tmp_path, "diverge", ["search.num_samples=2", "search.max_concurrent=2", "prompt.method=lorvp",
                                         "space.lr={type: float, low: 1.0e+30, high: 1.0e+35, log: true}"])
    recovered: list[str] = []

    class Recoveries(ray.tune.Callback):
        def on_trial_recover(self, iteration, trials, trial, **info):
            recovered.append(trial.trial_id)

    records = run_study(study, callbacks=[*tune_callbacks(study), Recoveries()]).records
    assert [r.state for r in records] == ["FAIL", "FAIL"]
    assert not recovered  # a diverged loss is not retried
    assert all(r.error.startswith("TrainingDiverged: loss became nan in epoch 1") for r in records)
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if " failed: " in line]
    assert len(lines) == 2 and all("lower train.lr" in line for line in lines)
    assert "Traceback" not in out.out + out.err
    client = mlflow.MlflowClient(tracking_uri(study))
    runs = client.search_runs([client.get_experiment_by_name("diverge").experiment_id], "tags.`lorsp.role` = 'trial'")
    assert len(runs) == 2
    for mlflow_run in runs:
        assert mlflow_run.info.status == "FAILED" and mlflow_run.data.tags["error"].startswith("TrainingDiverged")
        traceback_file = client.download_artifacts(mlflow_run.info.run_id, "error.txt", str(tmp_path))
        assert "Traceback" in Path(traceback_file).read_text()


def test_driver_error_leaves_nothing_running(tmp_path, local_ray):
    import mlflow
    import ray.tune

    from lorsp.tracking import tracking_uri
    from lorsp.tracking.callback import tune_callbacks
    from lorsp.tune import run_study

    study = _study(tmp_path, "crash", ["search.num_samples=3", "search.max_concurrent=1", "train.epochs=4",
                                       "prompt.method=lorvp"])

    class Crash(ray.tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result["epoch"] == 2:
                raise RuntimeError("a bug in a callback")

    with pytest.raises(Exception, match="a bug in a callback"):  # Tune wraps it in a TuneError
        run_study(study, callbacks=[*tune_callbacks(study), Crash()])
    trials = optuna.load_study(study_name="crash", storage=storage_uri(study)).trials
    assert trials and [t.state.name for t in trials] == ["WAITING"] * len(trials)
    client = mlflow.MlflowClient(tracking_uri(study))
    runs = client.search_runs([client.get_experiment_by_name("crash").experiment_id])
    assert runs and all(r.info.status == "KILLED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]


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
    assert prepare_study(study, storage, resume=False) == (0, 0, 2)
    with pytest.raises(ConfigError, match="--resume"):
        prepare_study(study, storage, resume=False)
    other = _study(tmp_path, "other", ["search.num_samples=2"])
    assert prepare_study(other, storage, resume=False) == (0, 0, 2)  # different names never mix


EPOCHS = 30


def _interrupt(tmp_path: Path, sig: signal.Signals, *, trials: int,
               finished: int) -> tuple[list[str], str, Path, dict[int, int]]:
    """Run a study of `trials` trials one at a time, send `sig` to the driver once `finished` trials
    are complete and the next has a checkpoint of an epoch in [2, EPOCHS - 10] (read from the
    Optuna storage, not from timing), check that nothing stays RUNNING in either store, and return
    (the command, the interrupted run's stderr, the store folder, and for each interrupted trial the
    epoch of its last checkpoint).

    The window is wide on purpose: 19 epochs of 8 steps (seconds, even for the fastest method on a
    quiet machine) for a poll every half second to see, and still 10 epochs for the stop to land
    in, where it needs one (Tune's stopper acts on the trial's next result)."""
    root = tmp_path / "runs"
    args = [sys.executable, "-m", "lorsp.tune", "--space", str(QUICKSTART), "--name", "resumable",
            "--num-samples", str(trials), "--max-concurrent", "1",
            "--set", "data.max_train=320", "--set", "data.batch_size=40",
            "--set", f"train.epochs={EPOCHS}", "--set", f"tracking.root={root}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    url = f"sqlite:///{root / 'optuna.db'}"

    def ready() -> bool:
        trials = optuna.load_study(study_name="resumable", storage=url).trials
        complete = sum(t.state.name == "COMPLETE" for t in trials)
        return complete >= finished and any(t.state.name == "RUNNING"
                                            and 2 <= t.user_attrs.get("epochs_done", 0) <= EPOCHS - 10
                                            for t in trials)

    wait_until(ready, proc)
    os.killpg(proc.pid, sig)  # to the whole group, as timeout, a terminal or a scheduler sends it
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 128 + sig, (proc.returncode, out[-2000:], err[-2000:])
    # Nothing stays RUNNING in either store.
    trials = optuna.load_study(study_name="resumable", storage=url).trials
    assert not [t for t in trials if t.state.name == "RUNNING"]
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert any(t.user_attrs.get("epochs_done", 0) >= 2 for t in waiting)  # interrupted with a checkpoint
    checkpoints = {t.number: t.user_attrs.get("epochs_done", 0) for t in waiting}
    # One line with the exact command that resumes.
    (hint,) = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert hint.endswith("--resume") and "python -m lorsp.tune --space" in hint and "Tuner.restore" not in err
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resumable").experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    return args, err, root, checkpoints


def test_interrupted_study_resumes_every_trial_once(tmp_path):
    """SIGTERM to the driver's process group (what GNU timeout and schedulers send; exit 143) after one
    finished trial, then --resume: the finished trial is not run again, the interrupted one continues
    from its checkpoint, and the one never started runs with a configuration of its own. Ctrl-C
    (SIGINT) and SIGHUP go through the same handler; tests/test_interruption.py holds each signal to
    it in-process, in milliseconds, and tests/test_driver.py SIGHUP to the group."""
    args, _, root, checkpoints = _interrupt(tmp_path, signal.SIGTERM, trials=3, finished=1)
    url = f"sqlite:///{root / 'optuna.db'}"
    before = {t.number: t.values for t in optuna.load_study(study_name="resumable", storage=url).trials
              if t.state.name == "COMPLETE"}
    assert before
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([*args, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "interrupted to resume" in done.stdout
    trials = optuna.load_study(study_name="resumable", storage=f"sqlite:///{root / 'optuna.db'}").trials
    assert [t.number for t in trials] == [0, 1, 2]  # every trial number once, none repeated
    assert all(t.state.name == "COMPLETE" and t.user_attrs["epochs_done"] == EPOCHS for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    assert {t.number: t.values for t in trials if t.number in before} == before  # not trained again
    resumed = [t for t in trials if t.user_attrs.get("interruptions")]
    assert sorted(t.number for t in resumed) == sorted(checkpoints)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = {int(r.data.tags["optuna_trial"]): r for r in client.search_runs(
        [client.get_experiment_by_name("resumable").experiment_id], "tags.`lorsp.role` = 'trial'")}
    assert sorted(runs) == [0, 1, 2] and all(r.info.status == "FINISHED" for r in runs.values())
    for number in before:  # logged once: nothing of a finished trial is replayed
        steps = [m.step for m in client.get_metric_history(runs[number].info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps
    for t in resumed:
        # Resumed from its checkpoint, not re-run: the epochs up to the checkpoint (>= 2) were
        # trained, and logged, once. (An epoch that ended after the last stored checkpoint is
        # trained again, so it may appear twice.)
        steps = [m.step for m in client.get_metric_history(runs[t.number].info.run_id, "val_acc")]
        upto = checkpoints[t.number]
        assert sorted(s for s in steps if s <= upto) == list(range(1, upto + 1)), (upto, steps)
        assert set(steps) == set(range(1, EPOCHS + 1)), steps
        assert runs[t.number].data.tags["resumed"] == "true"
