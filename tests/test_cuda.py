"""bf16 autocast on CUDA computes what fp32 computes: the checks `benchmarks/gpu.sh` runs on a GPU.

Training runs under ``torch.autocast("cuda", dtype=torch.bfloat16)`` (``train.amp``), while the
spiking neurons keep fp32 currents (a bf16 membrane would move spikes). Skipped without CUDA; the
Triton kernels against the eager path are in ``tests/test_prompts.py``.
"""

from __future__ import annotations

import pytest
import torch

from lorsp.config import StudyConfig, load_study
from lorsp.model import build_model
from lorsp.train import _autocast, train_loop
from tests.conftest import QUICKSTART

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

METHODS = [("none", {}), ("lorvp", {}), ("lorsp", {"factors": 4, "timesteps": 8}), ("spike_nvpt", {"timesteps": 8})]


def _model(method: str, extra: dict) -> torch.nn.Module:
    study = StudyConfig.model_validate(dict(
        backbone=dict(model="vit_tiny_patch16_224", pretrained=False),
        data=dict(image_size=64), prompt=dict(method=method, rank=4, threshold=0.3, noise_std=0.0, **extra),
    ))
    torch.manual_seed(0)
    model = build_model(study, num_classes=10).cuda()
    with torch.no_grad():  # off the all-zero init, so the prompt (and its neurons) really act
        for name, p in model.prompter.named_parameters():
            p.add_(torch.randn_like(p) * (2.0 if name in ("B", "beta") else 0.1))
    return model


@pytest.mark.parametrize("method,extra", METHODS)
def test_bf16_forward_and_gradients_follow_fp32(method: str, extra: dict) -> None:
    model = _model(method, extra)
    x = torch.rand(16, 3, 64, 64, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    outs = {}
    for amp in (False, True):
        model.zero_grad(set_to_none=True)
        with _autocast(torch.device("cuda"), amp):
            prompt = model.prompter.prompt(x)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])
        outs[amp] = (prompt.detach(), logits.detach().float(), grads)
    (p32, l32, g32), (p16, l16, g16) = outs[False], outs[True]
    assert p16.dtype == torch.float32  # the prompt is built in fp32 under autocast
    if method in ("lorsp", "spike_nvpt"):
        assert torch.equal(p16, p32)  # fp32 neurons: the same spikes, the same prompt
    assert (l16 - l32).abs().max() <= 0.05 * l32.abs().max() + 1e-3
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.98


def test_bf16_training_learns_as_fp32_does() -> None:
    base = ["train.epochs=6", "data.batch_size=64", "prompt.method=lorsp", "train.lr=0.05"]
    runs = {amp: train_loop(load_study(QUICKSTART, [*base, f"train.amp={amp}"]).resolved(), device="cuda",
                            verbose=False) for amp in (False, True)}
    assert runs[True]["val_acc"] > 0.5 and runs[False]["val_acc"] > 0.5
    assert abs(runs[True]["val_acc"] - runs[False]["val_acc"]) <= 0.1, runs
