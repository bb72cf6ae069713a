"""The metric registry: fixed names plus the per-level noise family, one set of facts for everyone."""

from __future__ import annotations

import pytest

from lorsp.metrics import (
    METRICS,
    PER_EPOCH,
    SELECTABLE,
    noise_level,
    noise_metric_name,
    reported,
    selection_error,
)


def test_new_metrics_have_their_direction_split_and_schedule():
    expected = {  # name: (mode, split, per_epoch, selectable)
        "val_acc_noise": ("max", "val", True, True),
        "test_acc_noise": ("max", "test", False, False),
        "prompt_energy_nj": ("min", "val", True, True),
        "prompt_ms": ("min", "run", True, True),
        "silent_gates": ("max", "val", True, True),
    }
    for name, (mode, split, per_epoch, selectable) in expected.items():
        m = METRICS[name]
        assert (m.mode, m.split, m.per_epoch, m.selectable) == (mode, split, per_epoch, selectable), name
    assert METRICS["val_acc_noise"].bounded and not METRICS["prompt_energy_nj"].bounded


@pytest.mark.parametrize("std,name", [(0.05, "val_acc_noise_0.05"), (0.1, "val_acc_noise_0.1"),
                                      (0.0, "val_acc_noise_0.0"), (1e-05, "val_acc_noise_1e-05"),
                                      (2, "val_acc_noise_2.0")])
def test_level_names_are_canonical_and_read_back(std: float, name: str):
    assert noise_metric_name("val", std) == name
    assert noise_level(name) == float(std)


def test_the_noise_family_is_looked_up_but_not_listed():
    member = METRICS["val_acc_noise_0.05"]
    assert (member.mode, member.split, member.per_epoch, member.bounded) == ("max", "val", True, True)
    test_member = METRICS.get("test_acc_noise_0.05")
    assert test_member is not None and not test_member.selectable and not test_member.per_epoch
    for spelling in ("val_acc_noise_0.050", "val_acc_noise_x", "val_acc_noise_-0.1", "val_acc_noise_inf"):
        assert spelling not in METRICS and METRICS.get(spelling) is None
        with pytest.raises(KeyError):
            METRICS[spelling]
    assert not any(name.startswith("val_acc_noise_") for name in [*METRICS, *PER_EPOCH, *SELECTABLE])
    assert selection_error("val_acc_noise_0.05", "objectives.metric") is None
    assert "use val_acc_noise_0.05" in selection_error("test_acc_noise_0.05", "objectives.metric")


def test_reported_lists_every_registry_metric_of_a_result():
    result = {"val_acc": 0.9, "epoch": 3.0, "test_acc_noise_0.1": 0.5, "val_acc_noise_0.1": 0.6,
              "val_acc_noise_0.05": 0.7, "val_acc_noise": 0.65, "test_acc": 0.8, "shard_digest_0": 1.0}
    assert reported(result) == ["val_acc", "test_acc", "val_acc_noise", "val_acc_noise_0.05", "val_acc_noise_0.1",
                                "test_acc_noise_0.1"]
    assert reported(result, per_epoch=True) == ["val_acc", "val_acc_noise", "val_acc_noise_0.05", "val_acc_noise_0.1"]
    assert reported(result, per_epoch=False) == ["test_acc", "test_acc_noise_0.1"]


def test_the_readme_explains_every_metric():
    """The README's objectives table is the user's registry: a metric missing there is unexplained."""
    from lorsp.metrics import METRICS
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("**What the objectives mean.**"):readme.index("**Conditional spaces.**")]
    assert not [name for name in METRICS if f"`{name}`" not in table]
