"""A prompt method is declared once (lorsp.methods): a plugin method declared in a test module
(tests/toy_prompter.py) is searchable, trainable and tunable with no other file touched, and the
built-in methods' defaults and ranges live in their declarations alone."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from lorsp.config import ConfigError, PromptConfig, load_study
from lorsp.methods import Knob, Method, knobs, method, method_names, register_method, unregister_method
from lorsp.prompts import create_prompter
from lorsp.search import ConditionalSpace, knob_params, used_knobs
from tests.conftest import BUILTIN_METHODS, QUICKSTART

PLUGIN = "tests.toy_prompter"
TINY = ["train.epochs=1", "data.max_train=96", "data.batch_size=32", "data.image_size=8",
        "backbone.model=vit_micro_patch4_16", "backbone.pretrained=false"]
TOY_SPACE = {
    "plugins": [PLUGIN],
    "space.method": {"type": "categorical", "choices": ["toy", "lorvp"], "balanced": True},
    "space.toy_scale": {"type": "float", "low": 0.1, "high": 1.5},
    "space.toy_tiles": {"type": "int", "low": 2, "high": 5},
}


@pytest.fixture
def toy():
    """The plugin registered only while a test needs it: the registry is the process's, and other
    tests' messages list the registered methods. Ending it also forgets the module, so the next
    test's `plugins:` registers it again, as a fresh process would."""
    yield
    unregister_method("toy")
    sys.modules.pop(PLUGIN, None)


def test_a_plugin_method_is_searchable_within_its_declared_range(toy, write_study, tmp_path):
    study = load_study(write_study(TOY_SPACE))
    assert "toy" in method_names() and study.prompt.toy_scale == 0.5  # the declared default
    space = ConditionalSpace(study)
    assert set(used_knobs(study, "toy")) == {"toy_scale", "toy_tiles", "lr"}
    assert "toy_scale" not in used_knobs(study, "lorvp")
    ot = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize",
                             sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    seen = []
    for _ in range(8):
        trial = ot.ask()
        space(trial)
        params = knob_params(trial.params)
        if params["method"] == "toy":
            declared = knobs()["toy_scale"]
            assert 0.1 <= params["toy_scale"] <= 1.5 and declared.problem(params["toy_scale"]) is None
            assert params["toy_tiles"] in range(2, 6)
            run = study.with_params(params)
            prompter = create_prompter(run.prompt.method, 8, **run.prompt.model_dump(exclude={"method"}))
            assert type(prompter).__name__ == "ToyPrompter" and prompter.toy_scale == params["toy_scale"]
            seen.append(params["toy_scale"])
        else:
            assert set(params) == {"method", "rank", "lr"}  # the toy's knobs are sampled for the toy alone
        ot.tell(trial, 0.5)
    assert len(set(seen)) >= 3  # really sampled, not the default each time


def test_a_space_outside_the_declared_range_is_refused(toy, write_study):
    with pytest.raises(ConfigError) as err:
        load_study(write_study({**TOY_SPACE, "space.toy_scale": {"type": "float", "low": 0.1, "high": 3.0}}))
    assert str(err.value).startswith("space.toy_scale.high: toy_scale must be a number in [0.0, 2.0], got 3.0")
    with pytest.raises(ConfigError, match=r"^prompt\.toy_tiles: must be an integer in \[1, 8\], got 9;"):
        load_study(write_study({"plugins": [PLUGIN], "prompt": {"method": "toy", "toy_tiles": 9}}))


def test_a_plugin_method_trains_with_its_declared_defaults(toy, tmp_path, capsys):
    from lorsp.train import main

    out = tmp_path / "run"
    overrides = [*TINY, f"plugins=[{PLUGIN}]", "prompt.method=toy", "prompt.toy_tiles=4"]
    code = main(["--config", str(QUICKSTART), "--out", str(out), *[a for kv in overrides for a in ("--set", kv)]])
    assert code == 0, capsys.readouterr().err[-2000:]
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["plugins"] == [PLUGIN]
    assert written["prompt"]["method"] == "toy"
    assert (written["prompt"]["toy_scale"], written["prompt"]["toy_tiles"]) == (0.5, 4)  # default, --set
    metrics = json.loads((out / "metrics.json").read_text())["final"]
    assert metrics["prompt_params"] == 3 * 4 * 4 and 0.0 <= metrics["val_acc"] <= 1.0
    assert metrics["prompt_density"] > 0.0  # the prompt moved off zero: it trained
    # The written study is read back (and the plugin imported again) like any other.
    unregister_method("toy")
    sys.modules.pop(PLUGIN, None)
    assert load_study(out / "config.yaml").prompt.toy_tiles == 4


def test_a_plugin_that_cannot_be_imported_is_one_line(write_study):
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"plugins": ["tests.no_such_plugin"]}))
    assert str(err.value).startswith("plugins: cannot import 'tests.no_such_plugin' (ModuleNotFoundError")
    assert "PYTHONPATH" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^prompt\.method: unknown prompt method 'toy'.*under `plugins:`"):
        load_study(write_study({"prompt.method": "toy"}))  # a plugin method without its plugin


def test_every_default_is_written_once_in_the_declarations():
    config = PromptConfig().model_dump()
    assert {k: v for k, v in config.items() if k != "method"} == {k.name: k.default for k in knobs().values()}
    for name in BUILTIN_METHODS:
        declared = method(name)
        cls = declared.load()
        params = inspect.signature(cls.__init__).parameters
        for knob in declared.knobs:  # a knob is a keyword the class takes, with no default of its own
            assert params[knob.name].default is inspect.Parameter.empty, (name, knob.name)
        assert set(params) - {"self", "image_size", "reference"} == set(declared.knob_names), name
        built = create_prompter(name, 16)
        for knob in declared.knobs:
            if hasattr(built, knob.name) and (name, knob.name) != ("spike_nvpt", "rank"):  # 0: dense θ
                assert getattr(built, knob.name) == knob.default, (name, knob.name)
    assert create_prompter("lorsp", 16).mode == method("lorsp").knobs[-1].default == "pixel"


def test_ranges_are_checked_from_the_declaration():
    with pytest.raises(ValueError, match=r"^decay: must be a number in \(0.0, 1.0\), got 1.0$"):
        create_prompter("lorsp", 8, decay=1.0)
    with pytest.raises(ValueError, match=r"^rank: must be an integer >= 1, got 0$"):
        create_prompter("lorvp", 8, rank=0)
    with pytest.raises(ConfigError, match=r"^prompt\.rank: must be an integer >= 1, got 0;"):
        load_study(QUICKSTART, ["prompt.rank=0"])


def test_the_registry_refuses_a_second_meaning_for_a_knob_or_a_name():
    with pytest.raises(ValueError, match="declares knob 'rank' unlike"):
        register_method(Method("wide", (Knob("rank", "int", 8, ge=1),), "x:Y"))
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("lorvp", (), "x:Y"))
    register_method(method("lorvp"))  # the same declaration again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="its default must be"):
        Knob("steps", "int", 0, ge=1)
    assert "wide" not in method_names()


def test_the_plugin_registers_on_import(toy):
    module = importlib.import_module(PLUGIN)
    assert method("toy") is module.TOY and module.TOY.load() is module.ToyPrompter


@pytest.mark.slow
def test_a_plugin_method_is_tunable(toy, tmp_path, local_ray):
    """The Ray trial processes validate the study they are handed, so they import the plugin too."""
    from lorsp.tune import run_study

    study = load_study(QUICKSTART, [
        "train.epochs=1", "data.max_train=160", "data.batch_size=40", f"tracking.root={tmp_path / 'runs'}",
        "name=toy", f"plugins=[{PLUGIN}]", "prompt.method=toy",
        "space.toy_scale={type: float, low: 0.2, high: 1.0}", "search.num_samples=2", "search.max_concurrent=2",
    ])
    records = run_study(study).records
    assert [r.state for r in records] == ["COMPLETE", "COMPLETE"], [(r.state, r.error) for r in records]
    for r in records:
        assert set(r.params) == {"toy_scale", "lr"}  # the toy's knob and lr; the LIF knobs never sampled
        assert 0.2 <= r.params["toy_scale"] <= 1.0
        assert r.values["trainable_params"] > 3 * 3 * 3  # the toy's prompt (default 3 tiles) plus the head
        assert Path(r.checkpoint_path, "prompt.safetensors").is_file()
