"""Each bad study file gives one line naming the key and the fix, and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorsp.config import ConfigError, load_study
from tests.conftest import QUICKSTART, REPO


def test_quickstart_resolves_space_defaults():
    study = load_study(QUICKSTART)
    run = study.resolved()
    assert run.prompt.rank == study.space["rank"].default
    assert run.train.lr == pytest.approx(study.space["lr"].default)
    assert run.prompt.threshold == pytest.approx(study.space["threshold"].default)


def test_set_overrides_fixed_setting_and_pins_knob():
    study = load_study(QUICKSTART, ["prompt.method=lorvp", "prompt.rank=7", "train.epochs=3"])
    assert study.prompt.method == "lorvp"
    assert "rank" not in study.space  # pinned on the command line, no longer searched
    run = study.resolved()
    assert run.prompt.rank == 7 and run.train.epochs == 3


def test_a_single_run_uses_its_methods_own_default():
    """The quickstart's lr has the probe's own range and default (`per_method`): a probe run uses
    it, a prompt run the shared one, however the method is chosen."""
    study = load_study(QUICKSTART)
    probe = study.space["lr"].per_method["none"]
    assert study.resolved().train.lr == study.space["lr"].default == 0.05  # lorsp, the method's default
    assert load_study(QUICKSTART, ["prompt.method=none"]).resolved().train.lr == probe["default"] == 1.0
    assert load_study(QUICKSTART, ["space.method.default=none"]).resolved().train.lr == 1.0
    assert load_study(QUICKSTART, ["prompt.method=lorvp"]).resolved().train.lr == 0.05
    assert load_study(QUICKSTART, ["prompt.method=none", "train.lr=0.7"]).resolved().train.lr == 0.7  # --set wins
    none = study.space["lr"].for_method("none")
    assert (none.low, none.high, none.log, none.default) == (0.1, 4.0, True, 1.0)
    assert study.space["lr"].for_method("lorsp") == study.space["lr"].model_copy(update={"per_method": {}})


_LR = {"type": "float", "low": 0.005, "high": 0.25, "log": True, "default": 0.05}


@pytest.mark.parametrize(
    ("per_method", "expected"),
    [
        ({"nonee": {"default": 0.3}}, "space.lr: unknown method 'nonee' for per_method (did you mean 'none'?)"),
        ({"none": {"choices": [0.3]}},
         "space.lr: per_method.none: 'choices' cannot differ by method; per_method.none accepts low, high, log, "
         "step, default: remove 'choices'"),
        ({"none": {"low": 0.1, "high": 1.0}},
         "space.lr: per_method.none: the knob's default 0.05 lies outside [0.1, 1.0]: give per_method.none its "
         "own default"),
        ({"none": {"low": 2.0, "high": 1.0, "default": 1.0}}, "space.lr: per_method.none: empty range"),
        ({"none": {"default": 0.5}}, "space.lr: per_method.none: default 0.5 lies outside [0.005, 0.25]"),
        ({"none": {"step": 0.1}}, "space.lr: per_method.none: a log-scale knob cannot have a step"),
    ],
)
def test_a_bad_per_method_entry_is_one_line(write_study, per_method, expected):
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"space.lr": {**_LR, "per_method": per_method}}))
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_vit_study_parses():
    study = load_study(REPO / "search_spaces" / "vit.yaml")
    assert study.backbone.model.startswith("vit_base_patch16_224")
    assert study.search.scheduler is not None and study.search.scheduler.type == "asha"
    assert study.with_params({"method": "lorvp", "rank": 8}).prompt.method == "lorvp"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"train.optimiser": "sgd"}, "train.optimiser: unknown key"),
        ({"train.epochs": "many"}, "train.epochs"),
        ({"space.rank": {"type": "int", "low": 8, "high": 2}}, "empty range"),
        ({"space.colour": {"type": "float", "low": 0, "high": 1}}, "unknown knob 'colour'"),
        ({"prompt.method": "lorsq"}, "did you mean 'lorsp'"),
        ({"backbone.model": "vit_tinyy_patch16_224"}, "unknown timm model"),
        ({"search.sampler": "cmaes"}, "unknown value 'cmaes' for search.sampler"),
        ({"data.dataset": "imagenet-99"}, "data.dataset"),
        ({"objectives": [{"metric": "speed", "mode": "max"}]}, "objectives.metric"),
        ({"objectives": [{"metric": "test_acc", "mode": "max"}]}, "test split, which never selects"),
        ({"search.scheduler": {"type": "asha", "metric": "test_acc"}}, "search.scheduler.metric: 'test_acc'"),
        ({"space.lr.balanced": True}, "space.lr: 'balanced' is not a key of a float knob"),
        ({"objectives": [{"metric": "val_acc"}, {"metric": "val_acc"}]}, "each metric once"),
        ({"resources.launcher": "fork"}, "resources.launcher"),
        ({"resources.launcher": "inline", "resources.workers_per_trial": 2}, "launcher: ray_train"),
        ({"data.augment": True}, "data.augment: a boolean is no longer accepted"),
        ({"data.augment": False}, "data.augment: a boolean is no longer accepted"),
        ({"data.augment": "cropflip"}, "did you mean 'crop_flip'"),
        ({"data.num_workers": 4}, "data.num_workers: unknown key"),
        ({"data.val_fraction": 0},
         "data.val_fraction: must be in (0, 1), got 0.0: the search selects on the validation"),
        ({"data.val_fraction": 1.0}, "data.val_fraction: must be in (0, 1), got 1.0: that leaves no training"),
        ({"data.test_fraction": 0},
         "data.test_fraction: must be in (0, 1), got 0.0: test metrics are reported on the test"),
        ({"data.test_fraction": -0.1}, "data.test_fraction: must be in (0, 1)"),
    ],
)
def test_bad_config_is_one_line(write_study, overrides, expected):
    path = write_study(overrides)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


_FLOAT = {"type": "float", "low": 0.05, "high": 2.0}
_INT = {"type": "int", "low": 1, "high": 8}
_CATEGORICAL = {"type": "categorical", "choices": ["lorsp", "lorvp"]}


@pytest.mark.parametrize(
    ("knob", "spec", "key"),
    [
        # The two cases: both ran a whole study with the stray keys ignored.
        ("method", {**_CATEGORICAL, "low": 10, "high": 1}, "high"),  # the first stray key by name
        ("threshold", {**_FLOAT, "choices": [0.1, 0.5]}, "choices"),
        # Every other key of another type, per type.
        ("method", {**_CATEGORICAL, "low": 1}, "low"),
        ("method", {**_CATEGORICAL, "log": True}, "log"),
        ("method", {**_CATEGORICAL, "step": 1}, "step"),
        ("method", {**_CATEGORICAL, "per_method": {"none": {}}}, "per_method"),
        ("threshold", {**_FLOAT, "balanced": False}, "balanced"),
        ("rank", {**_INT, "choices": [1, 2]}, "choices"),
        ("rank", {**_INT, "balanced": True}, "balanced"),
    ],
)
def test_a_key_of_another_knob_type_is_refused_in_one_line(write_study, knob, spec, key):
    kind = spec["type"]
    path = write_study({f"space.{knob}": spec})
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert message.startswith(f"space.{knob}: '{key}' is not a key of a")
    numeric = "low, high, log, step, default, per_method"
    accepted = {"int": numeric, "float": numeric,
                "categorical": "choices, default, balanced"}[kind]
    assert f"knob accepts type, {accepted}: remove '{key}'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({**_FLOAT, "hihg": 3.0}, "space.lr: 'hihg' is not a key of a float knob (did you mean 'high'?)"),
        ({**_FLOAT, "type": "bool"}, "space.lr.type: Input should be 'int', 'float' or 'categorical'"),
        ({**_FLOAT, "log": True, "step": 0.1}, "space.lr: a log-scale knob cannot have a step"),
        ({**_FLOAT, "step": 0}, "space.lr: step must be > 0"),
        ({**_INT, "step": 1.5}, "space.lr: an int knob needs a whole-number `step`"),
    ],
)
def test_unknown_keys_and_types_and_bad_steps_are_one_line(write_study, spec, expected):
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"space.lr": spec}))
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


@pytest.mark.parametrize("module", ["lorsp.train", "lorsp.tune"])
def test_cli_refuses_a_foreign_knob_key_before_any_trial(write_study, module, capsys):
    import importlib

    path = write_study({"space.threshold": {**_FLOAT, "choices": [0.1, 0.5]}})
    flag = "--config" if module == "lorsp.train" else "--space"
    assert importlib.import_module(module).main([flag, str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["error: space.threshold: 'choices' is not a key of a float knob ('choices' is for "
                     "categorical knobs); a float knob accepts type, low, high, log, step, default, per_method: "
                     "remove 'choices'"]


def test_launcher_auto_uses_ray_train_only_for_ddp_trials():
    assert not load_study(QUICKSTART).resources.uses_ray_train  # one worker: trains in the trial process
    assert load_study(QUICKSTART, ["resources.workers_per_trial=2"]).resources.uses_ray_train
    assert load_study(QUICKSTART, ["resources.launcher=ray_train"]).resources.uses_ray_train


def test_malformed_yaml_names_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nprompt: {method: lorsp\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"malformed YAML"):
        load_study(path)


@pytest.mark.parametrize("module", ["lorsp.train", "lorsp.tune"])
def test_cli_exit_code_2_without_traceback(write_study, module, capsys):
    import importlib

    path = write_study({"prompt.method": "lorsq"})
    flag = "--config" if module == "lorsp.train" else "--space"
    assert importlib.import_module(module).main([flag, str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "prompt.method" in lines[0]


def test_objective_mode_defaults_to_the_metrics_direction(write_study):
    study = load_study(write_study({"objectives": [{"metric": "val_acc"}, {"metric": "prompt_density"}]}))
    assert [(o.metric, o.mode) for o in study.objectives] == [("val_acc", "max"), ("prompt_density", "min")]


def test_test_metric_refusal_names_the_fix(write_study):
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"objectives": [{"metric": "test_acc", "mode": "max"}]}))
    assert str(err.value).endswith("use val_acc")


def test_augment_is_a_mode_defaulting_to_none(write_study):
    assert load_study(QUICKSTART).data.augment == "none"
    assert load_study(QUICKSTART, ["data.augment=crop"]).data.augment == "crop"
    # an old study file's boolean: refused, with the choices and the reason (flips change classes)
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"data.augment": True}))
    message = str(err.value)
    assert "none, crop, flip, crop_flip" in message and "digits" in message and "\n" not in message


@pytest.mark.parametrize("text", ["", "\n\n", "# a study, to be written\n# name: later\n"])
def test_empty_study_file_is_refused(tmp_path: Path, text: str):
    """An empty file would otherwise train an untrained default backbone on digits for minutes."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert "the study file is empty" in message and "backbone.model and data.dataset" in message
    assert "search_spaces/quickstart.yaml" in message and "\n" not in message


def test_study_file_must_name_backbone_and_data(tmp_path: Path):
    path = tmp_path / "partial.yaml"
    path.write_text("name: partial\nprompt: {method: lorvp}\ndata: {image_size: 16}\n")
    with pytest.raises(ConfigError, match=r"backbone\.model and data\.dataset missing"):
        load_study(path)
    # The command line may supply what the file leaves out; then the file loads.
    study = load_study(path, ["backbone.model=vit_micro_patch4_16", "data.dataset=digits"])
    assert study.backbone.model == "vit_micro_patch4_16" and study.data.image_size == 16
    # Code and tests that build studies directly keep every default.
    from lorsp.config import StudyConfig
    assert StudyConfig.model_validate({"name": "partial"}).backbone.model == "vit_tiny_patch16_224"


@pytest.mark.parametrize("module", ["lorsp.train", "lorsp.tune"])
def test_cli_refuses_empty_study_file(tmp_path: Path, capsys, module: str):
    import importlib

    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    main = importlib.import_module(module).main
    flag = "--config" if module == "lorsp.train" else "--space"
    assert main([flag, str(path), "--set", f"tracking.root={tmp_path / 'runs'}"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    expected = (f"error: {path}: the study file is empty; it needs at least backbone.model and data.dataset "
                "(and usually name, prompt, train, space); start from a copy of search_spaces/quickstart.yaml")
    assert lines == [expected]
    assert not (tmp_path / "runs").exists()  # refused before any store or output folder was made


def test_stored_configs_of_earlier_versions_still_load():
    """What lorsp wrote before (Optuna storage, checkpoints, exports) reads back as what it did."""
    import json

    from lorsp.config import stored_study

    old = load_study(QUICKSTART).model_dump(mode="json")
    old["data"]["augment"] = True
    old["data"]["num_workers"] = 4
    study = stored_study(json.dumps(old))
    assert study.data.augment == "crop_flip"  # what `true` trained with
    assert study.space == load_study(QUICKSTART).space
    # Earlier versions dumped every key of every knob type; those keys were ignored then, and are now.
    old["space"]["method"].update(low=None, high=None, log=False, step=None)
    old["space"]["lr"].update(choices=None, balanced=False)
    assert stored_study(old).space == load_study(QUICKSTART).space
    assert "low" not in study.model_dump()["space"]["method"]  # lorsp's own dumps read back
    assert study.space["lr"].per_method == {"none": {"low": 0.1, "high": 4.0, "default": 1.0}}
    assert "per_method" not in study.model_dump()["space"]["rank"]  # left out where unused
    old["data"]["augment"] = False
    assert stored_study(old).data.augment == "none"
    old["objectives"] = [{"metric": "test_acc", "mode": "max"}]
    with pytest.raises(ConfigError, match="re-run the study with val_acc"):
        stored_study(old)


def test_robust_and_energy_metrics_are_objectives(write_study):
    study = load_study(write_study({
        "eval": {"noise_std": [0.05, 0.1], "noise_seed": 3},
        "objectives": [{"metric": "val_acc_noise"}, {"metric": "val_acc_noise_0.05"},
                       {"metric": "prompt_energy_nj"}, {"metric": "prompt_ms"}, {"metric": "silent_gates"}],
        "search.scheduler": {"type": "asha", "metric": "val_acc_noise_0.1"},
    }))
    assert [(o.metric, o.mode) for o in study.objectives] == [
        ("val_acc_noise", "max"), ("val_acc_noise_0.05", "max"), ("prompt_energy_nj", "min"),
        ("prompt_ms", "min"), ("silent_gates", "max")]
    assert study.search.scheduler.mode == "max"
    assert (study.eval.noise_std, study.eval.noise_seed) == ([0.05, 0.1], 3)
    assert load_study(QUICKSTART).eval.noise_std == []  # off unless asked for


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({"eval.noise_std": [0.1], "objectives": [{"metric": "test_acc_noise"}]},
         "'test_acc_noise' is measured on the test split, which never selects trials (a choice made on test data "
         "overstates it); use val_acc_noise"),
        ({"eval.noise_std": [0.1], "objectives": [{"metric": "test_acc_noise_0.1"}]}, "use val_acc_noise_0.1"),
        ({"objectives": [{"metric": "val_acc_noise"}]}, "'val_acc_noise' needs noise levels: add e.g. eval:"),
        ({"eval.noise_std": [0.05], "objectives": [{"metric": "val_acc_noise_0.1"}]},
         "'val_acc_noise_0.1' is not a level in eval.noise_std [0.05]: use one of val_acc_noise_0.05"),
        ({"eval.noise_std": [0.05], "objectives": [{"metric": "val_acc_noise_0.050"}]},
         "did you mean 'val_acc_noise_0.05'?"),
        ({"eval.noise_std": [0.1], "search.scheduler": {"metric": "test_acc_noise"}},
         "search.scheduler.metric: 'test_acc_noise' is measured on the test split"),
        ({"eval.noise_std": [0.1, 0.1]}, "eval.noise_std: each level once"),
        ({"eval.noise_std": [-0.1]}, "eval.noise_std: every level must be a finite std >= 0"),
        ({"eval.corruptions": ["blur"]},
         "eval.corruptions: unknown key; remove it or use one of: noise_std, noise_seed"),
        ({"prompt.lorsp_mode": "factors"},
         "prompt.lorsp_mode: must be one of pixel, factor, got 'factors' (did you mean 'factor'?)"),
    ],
)
def test_noise_objectives_need_their_levels_and_never_the_test_split(write_study, overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_study(write_study(overrides))
    assert expected in str(err.value) and "\n" not in str(err.value)
