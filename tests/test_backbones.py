"""lorsp's own timm models, the weights shipped for the quickstart, and the script that made them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

from lorsp.backbones import MICRO_VIT_ARGS, MICRO_VIT_GRATINGS
from lorsp.config import BackboneConfig, check_backbone_name, load_study
from lorsp.model import create_backbone
from lorsp.pretrain import pretrain, save_headless
from lorsp.train import train_loop
from tests.conftest import QUICKSTART


def test_shipped_weights_load_through_timm_and_say_what_they_are():
    check_backbone_name("vit_micro_patch4_16.gratings")  # registered with timm: no ConfigError
    model = create_backbone(BackboneConfig(model="vit_micro_patch4_16.gratings", pretrained=True), 16)
    with safe_open(str(MICRO_VIT_GRATINGS), "pt") as f:
        recipe = json.loads(f.metadata()["lorsp_pretrain"])
        for key in f.keys():
            assert torch.equal(model.state_dict()[key], f.get_tensor(key)), key
        assert set(f.keys()) == set(model.state_dict())  # headless: nothing missing, no classifier
    assert recipe["model"] == "vit_micro_patch4_16" and recipe["source_val_acc"] > 0.9
    assert "synthetic" in recipe["dataset"]  # pretrained on gratings, never on the digits it is prompted for
    assert recipe["augment"] in ("none", "crop")  # a flip turns one grating orientation class into another
    random = create_backbone(BackboneConfig(model="vit_micro_patch4_16", pretrained=False), 16)
    qkv = "blocks.0.attn.qkv.weight"
    assert not torch.equal(random.state_dict()[qkv], model.state_dict()[qkv])
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["input_size"] == (3, 16, 16)


def test_pretrain_learns_the_source_task_and_its_file_loads_as_a_checkpoint(tmp_path: Path):
    model, summary = pretrain("vit_micro_patch4_16", dataset="synthetic:600", epochs=6, lr=3e-3, threads=1,
                              log=lambda m: None)
    assert summary["source_val_acc"] > 0.3  # 10 classes: well above chance after a few epochs
    path = save_headless(model, summary, tmp_path / "micro.safetensors")
    with safe_open(str(path), "pt") as f:
        assert not any(k.startswith("head.") for k in f.keys())
        assert json.loads(f.metadata()["lorsp_pretrain"])["epochs"] == 6
    loaded = create_backbone(BackboneConfig(model="vit_micro_patch4_16", checkpoint=str(path)),
                             MICRO_VIT_ARGS["img_size"])
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_pretrain_cli_rejects_an_unknown_model(tmp_path: Path, capsys):
    from lorsp.pretrain import main

    assert main(["--model", "vit_micro_patch5", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "backbone.model" in err and "Traceback" not in err and err.count("\n") == 1
    assert "vit_micro_patch4_16" in err  # the closest name is suggested
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_quickstart_prompts_beat_the_linear_probe():
    """The quickstart's point: on a frozen backbone from another domain, a learned prompt adapts it.

    Full quickstart settings (20 epochs, all of digits), validation accuracy: LoR-VP and LoRSP must
    each beat the linear probe (`none`) by a clear margin; measured 0.49-0.50 (none), 0.90-0.95
    (lorvp), 0.91-0.94 (lorsp) over train.seed 0-2, without augmentation, on the crop-only weights.
    """
    acc = {}
    for method in ("none", "lorvp", "lorsp"):
        study = load_study(QUICKSTART, [f"prompt.method={method}"]).resolved()
        acc[method] = train_loop(study, verbose=False)["val_acc"]
    assert acc["lorvp"] > acc["none"] + 0.15, acc
    assert acc["lorsp"] > acc["none"] + 0.15, acc
