"""The Tune searcher against a real Optuna RDB storage, without Ray running: what it hands Tune,
how each way a trial ends is told to the study, interrupted trials coming back, the pickle Tune
makes of it, and that lorsp reaches no library's private names (issue 23, item 5)."""

from __future__ import annotations

import math
import pickle
import re
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lorsp.config import load_study
from lorsp.search import (
    CHECKPOINT,
    EPOCHS_DONE,
    ERROR,
    INTERRUPTIONS,
    TRIAL_KEY,
    TUNE_TRIAL_ID,
    prepare_study,
    rdb_storage,
    storage_uri,
)
from lorsp.searcher import StudySearcher
from tests.conftest import QUICKSTART, REPO

FULL = {"finished": 1.0, "epoch": 20, "val_acc": 0.6, "prompt_density": 0.2, "trainable_params": 1000.0,
        "loss": 1.1}


def _searcher(tmp_path: Path, *overrides: str) -> tuple[StudySearcher, optuna.Study]:
    study = load_study(QUICKSTART, [f"tracking.root={tmp_path / 'runs'}", "name=s", *overrides])
    storage = rdb_storage(storage_uri(study))
    prepare_study(study, storage, resume=False)
    return StudySearcher(study, storage, history=0), optuna.load_study(study_name="s", storage=storage)


def test_each_way_a_trial_ends_is_told_to_the_study(tmp_path):
    searcher, stored = _searcher(tmp_path)
    configs = {tid: searcher.suggest(tid) for tid in ("a", "b", "c", "d")}
    assert [c[TRIAL_KEY] for c in configs.values()] == [{"number": n, "resume_from": None} for n in range(4)]
    assert all("lr" in c and not any("@" in k for k in c) for c in configs.values())  # knob names, not Optuna's
    assert searcher.suggest("a") == configs["a"]  # asked twice, the same trial
    searcher.record_checkpoint("a", "/ckpt/a", 3)
    searcher.on_trial_complete("a", FULL)
    searcher.on_trial_complete("b", {**FULL, "val_acc": math.nan})  # a full run with a NaN objective
    searcher.on_trial_complete("c", {"epoch": 2, "val_acc": 0.3})  # stopped by the scheduler
    searcher.on_trial_complete("d", {"epoch": 1}, error=True)
    searcher.on_trial_complete("a", {"epoch": 1})  # a second completion changes nothing
    trials = stored.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].values == [0.6, 0.2, 1000.0] and trials[0].user_attrs[CHECKPOINT] == "/ckpt/a"
    assert trials[0].user_attrs["metric:loss"] == 1.1 and trials[0].user_attrs[EPOCHS_DONE] == 20
    assert trials[0].user_attrs[TUNE_TRIAL_ID] == "a"
    assert trials[1].user_attrs[ERROR] == "objective val_acc missing or not finite" and trials[1].values is None
    assert "metric:val_acc" not in trials[1].user_attrs  # NaN is not kept as a metric
    assert trials[2].values is None and trials[2].user_attrs["metric:val_acc"] == 0.3
    assert trials[3].user_attrs[ERROR] == "the trial's process failed repeatedly"
    assert searcher.interrupt_unfinished() == 0


def test_an_interrupted_trial_comes_back_with_its_number_params_and_checkpoint(tmp_path):
    searcher, stored = _searcher(tmp_path)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", FULL)
    searcher.record_checkpoint("b", "/ckpt/b", 4)
    assert searcher.interrupt_unfinished() == 1
    assert searcher.interrupt_unfinished() == 0  # once
    waiting = stored.get_trials()[1]
    assert waiting.state == TrialState.WAITING and waiting.user_attrs[INTERRUPTIONS] == 1
    searcher.record_checkpoint("b", "/ckpt/late", 5)  # a late callback does not touch a queued trial
    assert stored.get_trials()[1].user_attrs[CHECKPOINT] == "/ckpt/b"
    again = searcher.suggest("c")
    assert again[TRIAL_KEY] == {"number": 1, "resume_from": "/ckpt/b"}
    assert {k: v for k, v in again.items() if k != TRIAL_KEY} == {k: v for k, v in second.items() if k != TRIAL_KEY}
    assert first[TRIAL_KEY]["number"] == 0 and stored.get_trials()[1].user_attrs[TUNE_TRIAL_ID] == "c"


def test_balanced_cells_share_the_budget(tmp_path):
    searcher, _ = _searcher(tmp_path)
    methods = []
    for i in range(8):
        config = searcher.suggest(f"t{i}")
        methods.append(config["method"])
        searcher.on_trial_complete(f"t{i}", {**FULL, "val_acc": 1.0 if config["method"] == "lorsp" else 0.0})
    assert Counter(methods) == {"lorsp": 2, "lorvp": 2, "pad": 2, "none": 2}


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_the_searcher_survives_the_pickles_tune_makes(tmp_path, sampler):
    """Tune pickles the searcher whole into `tuner.pkl` and through `save` into `searcher-state-*.pkl`;
    a copy carries on where the original was."""
    searcher, stored = _searcher(tmp_path, f"search.sampler={sampler}")
    searcher.suggest("a")
    copy = pickle.loads(pickle.dumps(searcher))
    copy.on_trial_complete("a", FULL)
    assert stored.get_trials()[0].state == TrialState.COMPLETE
    assert copy.suggest("b")[TRIAL_KEY]["number"] == 1
    path = tmp_path / "searcher-state.pkl"
    copy.save(str(path))
    fresh, _ = _searcher(tmp_path / "other")
    fresh.restore(str(path))
    assert fresh.suggest("b")[TRIAL_KEY]["number"] == 1  # the asked trial, not a new one
    fresh.on_trial_complete("b", {"epoch": 1})
    assert [t.state for t in stored.get_trials()] == [TrialState.COMPLETE, TrialState.PRUNED]


def test_a_tune_param_space_is_refused():
    assert StudySearcher.set_search_properties(object.__new__(StudySearcher), None, None, {"lr": 0.1}) is False


PRIVATE = re.compile(r"_ot_|\._storage|\._trial_id|(?<!get)_artifact_repos")


def test_lorsp_reads_no_private_optuna_ray_or_mlflow_state():
    """The names of Ray's OptunaSearch internals, Optuna's storage and trial ids, and MLflow's artifact
    cache: lorsp used them once; the public APIs do the same now (lorsp/searcher.py,
    lorsp/tracking/client.py). MLflow's public `get_artifact_repository` is the one name allowed
    to contain `_artifact_repos`."""
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for path in sorted((REPO / "lorsp").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert found == []
