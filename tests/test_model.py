"""The prompted model: any timm family, frozen backbone, clear errors for weights that cannot load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lorsp.config import BackboneConfig, ConfigError, StudyConfig
from lorsp.model import build_model, create_backbone

TINY = {
    "vit_tiny_patch16_224": {"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2},
    "resnet18": {},
    "convnext_atto": {},
    "swin_tiny_patch4_window7_224": {"depths": (1, 1), "num_heads": (1, 2), "embed_dim": 16, "window_size": 4},
}


def _study(model: str, method: str = "lorsp", size: int = 32) -> StudyConfig:
    return StudyConfig.model_validate({
        "backbone": {"model": model, "pretrained": False, "kwargs": TINY[model]},
        "data": {"image_size": size},
        "prompt": {"method": method, "rank": 2, "factors": 2, "threshold": 0.05},
    })


@pytest.mark.parametrize("model", list(TINY))
def test_families_run_and_only_prompt_and_head_learn(model):
    torch.manual_seed(0)
    net = build_model(_study(model), num_classes=5)
    backbone_before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    params = [p for p in net.parameters() if p.requires_grad]
    assert all(not p.requires_grad for p in net.backbone.parameters())
    opt = torch.optim.AdamW(params, lr=0.05)
    net.train()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert net(x).shape == (4, 5)
    assert all(p.grad is None for p in net.backbone.parameters())
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), f"backbone tensor {key} changed"
    assert net.prompter.B.grad is not None if hasattr(net.prompter, "B") else True
    assert not net.backbone.training  # frozen BatchNorm statistics stay put in train mode


def test_trainable_params_is_prompt_plus_head():
    net = build_model(_study("vit_tiny_patch16_224", "lorvp"), num_classes=10)
    head = 32 * 10 + 10
    assert net.prompter.num_prompt_params() == 6 * 32 * 2
    assert net.num_trainable_params() == 6 * 32 * 2 + head


def test_local_checkpoint_loads(tmp_path: Path):
    cfg = BackboneConfig(model="vit_tiny_patch16_224", kwargs=TINY["vit_tiny_patch16_224"])
    reference = create_backbone(cfg, 32)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = create_backbone(cfg.model_copy(update={"checkpoint": str(path), "pretrained": True}), 32)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_checkpoint_of_another_model_is_refused(tmp_path: Path):
    other = create_backbone(BackboneConfig(model="resnet18"), 32)
    path = tmp_path / "resnet.pth"
    torch.save(other.state_dict(), path)
    cfg = BackboneConfig(model="vit_tiny_patch16_224", kwargs=TINY["vit_tiny_patch16_224"], checkpoint=str(path))
    with pytest.raises(ConfigError, match="does not fit"):
        create_backbone(cfg, 32)


def test_offline_pretrained_says_what_to_do(monkeypatch, tmp_path: Path):
    # No network here: the hub download fails, and the message must name both ways out.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError) as err:
        create_backbone(BackboneConfig(model="resnet18.a1_in1k", pretrained=True), 32)
    assert "backbone.checkpoint" in str(err.value) and "pretrained: false" in str(err.value)


@pytest.mark.parametrize("method", ["lorvp", "lorsp"])
def test_prompt_is_added_in_pixel_space_before_the_backbone_normalisation(method):
    """docs/methods.md: features = backbone((prompter(x) - mean) / std), with the backbone's own mean/std.

    resnet18's ImageNet statistics differ per channel and std != 1, so a prompt added after the
    normalisation ((x - mean) / std + prompt) gives different features, and so does skipping it.
    """
    import timm

    torch.manual_seed(0)
    net = build_model(_study("resnet18", method), num_classes=5).eval()
    with torch.no_grad():
        net.prompter.B.normal_(0, 1.0)
        if method == "lorsp":
            net.prompter.beta.fill_(1.0)
    cfg = timm.data.resolve_data_config({}, model=net.backbone)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    assert not torch.allclose(std, torch.ones(1)) and len(set(cfg["mean"])) == 3
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        prompt = net.prompter.prompt(x)
        assert torch.count_nonzero(prompt) > prompt.numel() // 10  # a prompt the features can show
        got = net.features(x)
        assert torch.allclose(got, net.backbone((x + prompt - mean) / std), atol=1e-5)
        assert not torch.allclose(got, net.backbone((x - mean) / std + prompt), atol=1e-3)
        assert not torch.allclose(got, net.backbone((x - mean) / std), atol=1e-3)
        assert torch.allclose(net(x), net.head(got), atol=1e-6)
