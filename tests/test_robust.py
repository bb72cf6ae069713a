"""Robust accuracy (eval.noise_std): the same noisy images everywhere, exact at σ = 0, chance at huge σ."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from lorsp.config import load_study
from lorsp.data import BatchIterator, ImageSplit, load_splits_for
from lorsp.data.seeding import mix
from lorsp.evaluation import NOISE_STREAMS, NoiseSpec, evaluate
from lorsp.model import build_model
from lorsp.noise import add_noise, standard_normal
from lorsp.train import train_loop
from tests.conftest import QUICKSTART

# Digits at their stored 8 px on a random-init ViT-Micro: enough to push images through a model.
TINY = ["train.epochs=1", "data.max_train=96", "data.batch_size=32", "data.image_size=8",
        "backbone.model=vit_micro_patch4_16", "backbone.pretrained=false"]


@dataclass
class _Ctx:
    device: torch.device
    rank: int = 0
    world_size: int = 1


def _prompter_inputs(study, seed: int, split: ImageSplit, batch_size: int, ctx: _Ctx, levels):
    """Run `evaluate` and return, per level, the images the prompter saw (concatenated in order)."""
    torch.manual_seed(seed)
    model = build_model(study, 10)
    seen: list[torch.Tensor] = []
    model.prompter.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    batches = BatchIterator(split, batch_size=batch_size, image_size=study.data.image_size)
    result = evaluate(model, iter(batches), ctx, amp=False, noise=NoiseSpec(levels, seed=3), split="val")
    per_batch = len(levels) + 1  # the clean pass, then one pass per level
    return [torch.cat(seen[i::per_batch]) for i in range(per_batch)], result


def test_noisy_images_are_the_same_in_every_trial_and_batch_size():
    study = load_study(QUICKSTART, [*TINY, "prompt.method=lorvp"]).resolved()
    split = load_splits_for(study.data).val
    levels = (0.05, 0.1)
    cpu = _Ctx(torch.device("cpu"))
    first, r1 = _prompter_inputs(study, 0, split, 7, cpu, levels)
    second, _ = _prompter_inputs(study, 1, split, 64, cpu, levels)  # another trial: other init, batches
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    clean = first[0]
    assert len(clean) == len(split)
    z = standard_normal(torch.arange(len(split)), tuple(clean.shape[1:]), mix(3, NOISE_STREAMS["val"]))
    for std, noisy in zip(levels, first[1:]):
        assert torch.equal(noisy, add_noise(clean, z, std))
    assert len(r1["noise_acc"]) == 2 and all(0.0 <= a <= 1.0 for a in r1["noise_acc"])


def test_a_ddp_rank_sees_the_noise_of_its_images(tmp_path):
    """Rank 1 of 2 evaluates split[1::2]; its noisy images are rows 1, 3, 5, ... of the single-process run."""
    study = load_study(QUICKSTART, [*TINY, "prompt.method=none"]).resolved()
    split = load_splits_for(study.data).val
    levels = (0.2,)
    whole, _ = _prompter_inputs(study, 0, split, 16, _Ctx(torch.device("cpu")), levels)
    shard = ImageSplit(images=split.images[1::2], labels=split.labels[1::2])
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        mine, _ = _prompter_inputs(study, 0, shard, 16, _Ctx(torch.device("cpu"), rank=1, world_size=2), levels)
    finally:
        dist.destroy_process_group()
    assert torch.equal(mine[1], whole[1][1::2])


def test_sigma_zero_equals_clean_accuracy_and_huge_sigma_is_near_chance(tmp_path):
    study = load_study(QUICKSTART, ["train.epochs=2", "prompt.method=lorvp",
                                    "eval.noise_std=[0.0, 10.0]", "eval.noise_seed=5"]).resolved()
    epochs: list[dict[str, float]] = []
    final = train_loop(study, lambda m, _: epochs.append(m), verbose=False)
    for m in epochs:  # every epoch, so a scheduler can use it
        assert m["val_acc_noise_0.0"] == m["val_acc"]
        assert m["val_acc_noise"] == pytest.approx((m["val_acc_noise_0.0"] + m["val_acc_noise_10.0"]) / 2)
        assert "test_acc_noise" not in m or m is epochs[-1]
    assert final["test_acc_noise_0.0"] == final["test_acc"]
    assert final["val_acc"] > 0.5  # the prompt and head learnt something ...
    # ... that σ = 10 (every pixel clamped to 0 or 1 at random) destroys: near 1/10, the chance level
    assert final["val_acc_noise_10.0"] < 0.25 and final["test_acc_noise_10.0"] < 0.25
    assert not math.isnan(final["test_acc_noise"])
