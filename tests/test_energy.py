"""Energy of the prompt (docs/methods.md, "Energy"): each method's count, checked by hand."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from lorsp.config import load_study
from lorsp.data import BatchIterator, load_splits_for
from lorsp.evaluation import evaluate
from lorsp.model import build_model
from lorsp.prompts import create_prompter
from lorsp.prompts.energy import PJ_PER_AC, PJ_PER_MAC, EnergyOps
from tests.conftest import BUILTIN_METHODS, QUICKSTART

TINY = ["train.epochs=1", "data.max_train=96", "data.batch_size=32", "data.image_size=8",
        "backbone.model=vit_micro_patch4_16", "backbone.pretrained=false"]


def test_horowitz_figures():
    """4.6 pJ per 32-bit MAC and 0.9 pJ per AC (ISSCC 2014, 45 nm); the result is in nJ."""
    assert (PJ_PER_MAC, PJ_PER_AC) == (4.6, 0.9)
    assert EnergyOps(macs=1000.0, acs=0.0).nanojoules() == pytest.approx(4.6)
    assert EnergyOps(macs=0.0, acs=1000.0).nanojoules() == pytest.approx(0.9)


def test_every_method_counts_its_operations():
    for method in BUILTIN_METHODS:
        ops = create_prompter(method, 8).energy_ops(0.1)
        assert isinstance(ops, EnergyOps) and ops.macs >= 0 and ops.acs >= 0, method


def test_no_prompt_costs_nothing():
    assert create_prompter("none", 16).energy_ops(0.3) == EnergyOps(0.0, 0.0)
    assert create_prompter("none", 16).energy_ops(0.3).nanojoules() == 0.0


@pytest.mark.parametrize("method,extra", [("lorvp", {}), ("spike_nvpt", {}), ("spike_nvpt", {"low_rank": True})])
@pytest.mark.parametrize("L", [8, 16])
def test_a_static_prompt_is_one_addition_per_pixel(method: str, extra: dict, L: int):
    prompter = create_prompter(method, L, rank=2, **extra)
    for rate in (0.0, 0.7):  # Spike-NVPT's neurons ran once, before deployment: their rate is free
        ops = prompter.energy_ops(rate)
        assert ops == EnergyOps(macs=0.0, acs=3 * L * L)
        assert ops.nanojoules() == pytest.approx(3 * L * L * 0.9 / 1000)


def test_pad_adds_only_its_frame():
    L, p = 16, 3
    ops = create_prompter("pad", L, pad_width=p).energy_ops(0.0)
    assert ops == EnergyOps(macs=0.0, acs=3 * (L * L - (L - 2 * p) ** 2))


def test_lorsp_pixel_mode_formula_by_hand():
    """K = 2, L = 4, T = 3, ρ = 0.25. Per image: a current MAC and T membrane MACs for each of the
    K·3·L² = 96 neurons (384 MACs); 2 populations · 96 · T = 576 neuron-steps at ρ = 0.25 are 144
    spikes, one AC each. 384·4.6 + 144·0.9 = 1896 pJ."""
    prompter = create_prompter("lorsp", 4, rank=1, factors=2, timesteps=3)
    ops = prompter.energy_ops(0.25)
    assert ops == EnergyOps(macs=384.0, acs=144.0)
    assert ops.nanojoules() == pytest.approx(1.896)
    assert prompter.energy_ops(0.0).acs == 0.0  # a silent prompt: no spike, no accumulate


def test_lorsp_factor_mode_formula_by_hand():
    """K = 2, L = 4, T = 3, ρ = 0.5. Per image: 3·L² = 48 ACs for the channel sums; a current MAC
    and T membrane MACs for each of the K·3 = 6 gates (24 MACs); 2 · 6 · T = 36 neuron-steps at
    ρ = 0.5 are 18 spikes, each adding a stored L×L factor (16 ACs): 48 + 288 = 336 ACs.
    24·4.6 + 336·0.9 = 412.8 pJ."""
    prompter = create_prompter("lorsp", 4, rank=1, factors=2, timesteps=3, lorsp_mode="factor")
    ops = prompter.energy_ops(0.5)
    assert ops == EnergyOps(macs=24.0, acs=336.0)
    assert ops.nanojoules() == pytest.approx(0.4128)


@dataclass
class _Ctx:
    device: torch.device
    rank: int = 0
    world_size: int = 1


@pytest.mark.parametrize("mode", ["pixel", "factor"])
def test_evaluation_prices_the_spikes_it_measured(mode: str):
    """A LoRSP whose neurons all fire at every step (current I = 2, τ = 2: h = I/τ = 1 ≥ V_th = 0.5
    from a reset membrane): the +I population always fires, the −I one never, so ρ = ½ exactly,
    and the energy the evaluation reports is the hand formula at ρ = ½."""
    study = load_study(QUICKSTART, [*TINY, "prompt.method=lorsp", "prompt.factors=2", "prompt.threshold=0.5",
                                    "prompt.decay=0.5", "prompt.timesteps=3", "prompt.rank=1",
                                    f"prompt.lorsp_mode={mode}"]).resolved()
    split = load_splits_for(study.data).val
    model = build_model(study, 10)
    p = model.prompter
    with torch.no_grad():
        p.B.fill_(2.0)
        p.A.fill_(1.0)  # P_k = B_k·A_k = 2 everywhere
        if mode == "pixel":
            p.beta.zero_()
        else:
            p.gate_weight.zero_()
            p.gate_bias.fill_(2.0)
    batches = BatchIterator(split, batch_size=16, image_size=8)
    result = evaluate(model, iter(batches), _Ctx(torch.device("cpu")), amp=False)
    assert result["firing_rate"] == 0.5
    L, K, T = 8, 2, 3
    if mode == "pixel":
        macs, acs = K * 3 * L * L * (1 + T), 0.5 * 2 * K * 3 * L * L * T
    else:
        macs, acs = K * 3 * (1 + T), 3 * L * L + 0.5 * 2 * K * 3 * T * L * L
        assert result["silent_gates"] == 0.0
    assert result["prompt_energy_nj"] == pytest.approx((4.6 * macs + 0.9 * acs) / 1000)
    assert 0.0 < result["prompt_ms"] < 10_000
