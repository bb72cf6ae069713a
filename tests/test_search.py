"""The Optuna side of a study on a real RDB storage: conditional spaces, balanced budgets, the
sampler's seed on resume, and interrupted trials that wait in the queue to be finished."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest

from lorsp.config import ConfigError, load_study
from lorsp.samplers import create_sampler, sampler_seed
from lorsp.search import (
    CHECKPOINT,
    INTERRUPTIONS,
    ConditionalSpace,
    balanced_cells,
    knob_params,
    mark_interrupted,
    method_knobs,
    next_balanced_cell,
    prepare_study,
    rdb_storage,
    storage_uri,
    unused_knobs,
    used_knobs,
)
from tests.conftest import QUICKSTART

METHODS = ["lorsp", "lorvp", "pad", "none"]


def _study(tmp_path: Path, *overrides: str):
    return load_study(QUICKSTART, [f"tracking.root={tmp_path / 'runs'}", *overrides])


def test_each_method_samples_only_the_knobs_it_reads(tmp_path):
    study = _study(tmp_path)
    assert study.space["method"].choices == METHODS
    space = ConditionalSpace(study)
    ot = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[frozenset[str]]] = {}
    for _ in range(60):
        trial = ot.ask()
        space(trial)
        method = trial.params["method"]
        seen.setdefault(method, set()).add(frozenset(knob_params(trial.params)) - {"method"})
        ot.tell(trial, 0.5)
    assert seen == {
        "lorsp": {frozenset({"rank", "timesteps", "threshold", "decay", "surrogate_slope", "lr"})},
        "lorvp": {frozenset({"rank", "lr"})},
        "pad": {frozenset({"pad_width", "lr"})},
        "none": {frozenset({"lr"})},
    }


def test_per_method_ranges_are_sampled_as_their_own_parameters_in_the_storage(tmp_path):
    """The probe's lr from its range, the prompts' from theirs, with the study's own TPE sampler on
    a real RDB storage: the ranges do not overlap, so a value from the wrong one would show."""
    study = _study(tmp_path, "space.lr={type: float, low: 1.0e-3, high: 0.05, log: true, default: 0.01,"
                             " per_method: {none: {low: 0.2, high: 1.0, default: 0.5}}}")
    storage = rdb_storage(storage_uri(study))
    prepare_study(study, storage, resume=False)
    ot = optuna.load_study(study_name=study.name, storage=storage, sampler=create_sampler(study))
    space, cells = ConditionalSpace(study), balanced_cells(study)
    for i in range(16):  # past TPE's 10 start-up trials, so its model proposes too
        ot.enqueue_trial(next_balanced_cell(ot, cells))
        trial = ot.ask()
        space(trial)
        ot.tell(trial, [1.0 - i / 16, 0.0, 1.0])
    stored = optuna.load_study(study_name=study.name, storage=storage_uri(study)).trials
    probe = [t for t in stored if t.params["method"] == "none"]
    prompts = [t for t in stored if t.params["method"] != "none"]
    assert len(probe) == 4 and len(prompts) == 12
    assert all(set(t.params) == {"method", "lr@none"} and 0.2 <= t.params["lr@none"] <= 1.0 for t in probe)
    assert all("lr@none" not in t.params and 1.0e-3 <= t.params["lr"] <= 0.05 for t in prompts)
    # Everything past Optuna reads the knob's name.
    assert all(knob_params(t.params) == {"method": "none", "lr": t.params["lr@none"]} for t in probe)


def test_a_per_method_range_for_a_method_that_ignores_the_knob_is_refused(tmp_path):
    study = _study(tmp_path, "space.rank.per_method={none: {low: 2, high: 4}}")
    with pytest.raises(ConfigError) as err:
        ConditionalSpace(study)
    assert str(err.value) == ("space.rank.per_method.none: none does not read rank (it reads no prompt knob); "
                              "remove that entry")


def test_the_method_registry_is_the_only_list_of_methods_and_knobs():
    """Knob ownership, the config's methods and the `prompt` section's keys all come from the
    declarations in lorsp.methods: no second list exists to fall out of step with them."""
    import lorsp.config
    from lorsp.config import PromptConfig, prompt_keys
    from lorsp.methods import knobs, method_names, methods

    assert method_knobs() == {m.name: m.knob_names for m in methods()}
    assert set(prompt_keys()) == set(knobs()) | {"method"}
    assert set(PromptConfig().model_dump()) == set(prompt_keys())
    assert not hasattr(lorsp.config, "PROMPT_METHODS")
    for name in method_names():  # every method's class is where its declaration says
        assert declaration_class(name).method == name


def declaration_class(name: str) -> type:
    from lorsp.methods import method

    return method(name).load()


def test_used_knobs_keeps_train_knobs_for_every_method(tmp_path):
    study = _study(tmp_path)
    assert used_knobs(study, "none") == ["lr"]
    assert set(used_knobs(study, "lorsp")) == {"rank", "timesteps", "threshold", "decay", "surrogate_slope", "lr"}


def test_a_knob_no_method_reads_is_never_sampled(tmp_path):
    study = _study(tmp_path, "prompt.method=lorvp")  # pins the method: the LIF and pad knobs go unused
    assert "method" not in study.space
    assert unused_knobs(study) == ["timesteps", "threshold", "decay", "surrogate_slope", "pad_width"]
    ot = optuna.create_study(directions=["maximize"])
    trial = ot.ask()
    ConditionalSpace(study)(trial)
    assert set(trial.params) == {"rank", "lr"}


def test_balanced_cells_give_each_method_the_same_budget(tmp_path):
    study = _study(tmp_path)
    cells = balanced_cells(study)
    assert cells == [{"method": m} for m in METHODS]
    ot = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.TPESampler(seed=0))
    space = ConditionalSpace(study)
    for _ in range(10):
        ot.enqueue_trial(next_balanced_cell(ot, cells))
        trial = ot.ask()
        space(trial)
        # A sampler that would always pick lorsp would win without the balance: make lorsp look best.
        ot.tell(trial, 1.0 if trial.params["method"] == "lorsp" else 0.0)
    counts = Counter(t.params["method"] for t in ot.trials)
    assert counts == {"lorsp": 3, "lorvp": 3, "pad": 2, "none": 2}
    assert [t.params["method"] for t in ot.trials[:4]] == METHODS


def test_a_second_balanced_knob_splits_only_the_methods_that_read_it(tmp_path):
    study = _study(tmp_path, "space.lorsp_mode={type: categorical, choices: [pixel, factor], balanced: true}")
    cells = balanced_cells(study)
    assert cells == [{"method": "lorsp", "lorsp_mode": "pixel"}, {"method": "lorsp", "lorsp_mode": "factor"},
                     {"method": "lorvp"}, {"method": "pad"}, {"method": "none"}]
    ot = optuna.create_study(directions=["maximize"])
    space = ConditionalSpace(study)
    for _ in range(10):
        ot.enqueue_trial(next_balanced_cell(ot, cells))
        trial = ot.ask()
        space(trial)
        ot.tell(trial, 0.0)
    counts = Counter((t.params["method"], t.params.get("lorsp_mode")) for t in ot.trials)
    assert counts == {("lorsp", "pixel"): 2, ("lorsp", "factor"): 2, ("lorvp", None): 2, ("pad", None): 2,
                      ("none", None): 2}


def test_sampler_seed_depends_on_the_study_history(tmp_path):
    study = _study(tmp_path, "search.sampler=random")
    assert sampler_seed(study, 0) == study.search.seed  # a fresh study is reproducible from its seed
    assert sampler_seed(study, 2) == sampler_seed(study, 2) != sampler_seed(study, 3)

    def proposals(history: int, n: int) -> list[float]:
        ot = optuna.create_study(directions=["maximize"], sampler=create_sampler(study, history))
        out = []
        for _ in range(n):
            trial = ot.ask()
            out.append(trial.suggest_float("lr", 1e-3, 1e-1, log=True))
            ot.tell(trial, 0.0)
        return out

    assert proposals(0, 2) == proposals(0, 2)
    assert not set(proposals(0, 2)) & set(proposals(2, 2))  # a resumed sampler does not replay


def test_interrupted_trial_waits_and_comes_back_with_its_number_and_params(tmp_path):
    study = _study(tmp_path, "name=queue", "search.num_samples=3")
    storage = rdb_storage(storage_uri(study))
    assert prepare_study(study, storage, resume=False) == (0, 0, 3)
    ot = optuna.load_study(study_name="queue", storage=storage)
    first = ot.ask()
    first.suggest_float("lr", 1e-3, 1e-1, log=True)
    ot.tell(first, [0.5, 0.1, 100.0])
    second = ot.ask()
    lr = second.suggest_float("lr", 1e-3, 1e-1, log=True)
    second.set_user_attr(CHECKPOINT, "/somewhere/checkpoint_000001")
    mark_interrupted(storage, "queue", second.number)
    stored = ot.trials[1]
    assert stored.state == optuna.trial.TrialState.WAITING and stored.user_attrs[INTERRUPTIONS] == 1
    third = ot.ask()  # whoever asks next gets the interrupted trial back, not a new one
    assert third.number == 1 and third.params == {"lr": lr}
    assert third.suggest_float("lr", 1e-3, 1e-1, log=True) == lr
    assert third.user_attrs[CHECKPOINT] == "/somewhere/checkpoint_000001"


def test_resume_counts_finished_and_queues_running_trials(tmp_path):
    study = _study(tmp_path, "name=counts", "search.num_samples=4")
    storage = rdb_storage(storage_uri(study))
    prepare_study(study, storage, resume=False)
    ot = optuna.load_study(study_name="counts", storage=storage)
    states = [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    for state in states:
        trial = ot.ask()
        ot.tell(trial, [0.5, 0.1, 100.0] if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    ot.ask()  # left RUNNING by a driver that died (SIGKILL)
    with pytest.raises(ConfigError, match="--resume"):
        prepare_study(study, storage, resume=False)
    assert prepare_study(study, storage, resume=True) == (2, 1, 2)
    assert [t.state.name for t in ot.trials] == ["COMPLETE", "PRUNED", "WAITING"]
    assert not ot.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_a_new_study_carries_its_objective_names_and_a_refused_one_writes_nothing(tmp_path):
    """Optuna's plots and optuna-dashboard label the objectives by the names the study carries; and
    check_study refuses (no study, --resume) before prepare_study would create anything."""
    from lorsp.search import check_study, prepare_study, rdb_storage

    study = load_study(QUICKSTART, [f"tracking.root={tmp_path}", "name=named"])
    storage = rdb_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    with pytest.raises(ConfigError, match="--resume: no study named 'named'"):
        check_study(study, storage, resume=True)
    assert optuna.get_all_study_names(storage) == []
    prepare_study(study, storage, resume=False)
    loaded = optuna.load_study(study_name="named", storage=storage)
    assert loaded.metric_names == [o.metric for o in study.objectives]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_survives_the_pickle_ray_tune_makes_of_its_searcher(sampler):
    import pickle

    study = load_study(QUICKSTART, [f"search.sampler={sampler}"])
    copy = pickle.loads(pickle.dumps(create_sampler(study)))
    assert type(copy) is type(create_sampler(study))
