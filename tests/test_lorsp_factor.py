"""LoRSP factor mode (docs/methods.md): spiking gates switch whole rank-r factors on and off."""

from __future__ import annotations

import pytest
import torch

from lorsp.config import load_study
from lorsp.prompts import create_prompter
from lorsp.search import used_knobs
from lorsp.train import train_loop
from tests.conftest import QUICKSTART, lif_spike_counts

L = 16
TINY = ["train.epochs=1", "data.max_train=96", "data.batch_size=32", "data.image_size=8",
        "backbone.model=vit_micro_patch4_16", "backbone.pretrained=false"]


def _factor(K: int = 3, r: int = 2, **kw):
    return create_prompter("lorsp", L, rank=r, factors=K, lorsp_mode="factor", **kw)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, L, L, generator=torch.Generator().manual_seed(seed))


def _varied_images(n: int = 6) -> torch.Tensor:
    """Images whose channel means differ a lot, so instance-driven gates have something to see."""
    levels = torch.linspace(0.05, 0.95, n)[:, None, None, None]
    return (levels + 0.05 * _images(n)).clamp(0, 1)


def _randomise(prompter, gate_scale: float = 3.0) -> None:
    with torch.no_grad():
        prompter.B.normal_(0, 1.0)
        prompter.A.normal_(0, 1.0)
        prompter.gate_weight.normal_(0, gate_scale)
        prompter.gate_bias.normal_(0, 0.5)


@pytest.mark.parametrize("L_,r,K", [(16, 1, 1), (16, 2, 3), (24, 3, 4)])
def test_parameter_count_is_that_of_pixel_mode(L_: int, r: int, K: int):
    """K·(6·L·r + 6): B_k, A_k (6·L·r) and the gate's weight and bias (3 + 3) per factor."""
    prompter = create_prompter("lorsp", L_, rank=r, factors=K, lorsp_mode="factor")
    assert prompter.num_prompt_params() == K * (6 * L_ * r + 6)
    assert {n for n, _ in prompter.named_parameters()} == {"B", "A", "gate_weight", "gate_bias"}


def test_prompt_follows_the_formulation():
    """Rebuilt by hand: I_{k,c} = w_{k,c}·mean(x_c − 0.5) + b_{k,c}; g = (S⁺ − S⁻)/T from a ±I LIF pair;
    prompt_c = Σ_k g_{k,c}·B_{k,c}·A_{k,c}."""
    torch.manual_seed(0)
    K, r, T, thr, decay = 3, 2, 5, 0.3, 0.4
    prompter = _factor(K, r, timesteps=T, threshold=thr, decay=decay)
    _randomise(prompter)
    x = _varied_images()
    with torch.no_grad():
        got = prompter.prompt(x)
    B, A, w, b = (q.detach() for q in (prompter.B, prompter.A, prompter.gate_weight, prompter.gate_bias))
    current = w[None] * (x - 0.5).mean(dim=(2, 3))[:, None, :] + b[None]  # [N, K, 3]
    gate = (lif_spike_counts(current, T, thr, 1 / decay) - lif_spike_counts(-current, T, thr, 1 / decay)) / T
    expected = torch.einsum("nkc,kcij->ncij", gate, torch.einsum("kcir,kcrj->kcij", B, A))
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(prompter.gates(x), gate)  # the gates are exact multiples of 1/T
    assert float(prompter.stats()["silent_gates"]) == pytest.approx(float((gate == 0).float().mean()))


@pytest.mark.parametrize("K,r", [(1, 1), (2, 2), (3, 1)])
def test_each_channel_has_rank_at_most_k_times_r(K: int, r: int):
    torch.manual_seed(K * 10 + r)
    prompter = _factor(K, r, threshold=0.2)
    _randomise(prompter)
    x = _varied_images()
    prompt = prompter.prompt(x)
    # fp32 tolerance (the default for an fp32 matrix: L · eps · σ_max): the prompt is computed in fp32
    ranks = [int(torch.linalg.matrix_rank(prompt[n, c].detach())) for n in range(len(x)) for c in range(3)]
    assert max(ranks) <= K * r
    assert max(ranks) == K * r  # some channel uses every factor: the bound is reached, not a fluke
    # Pixel mode on the same weights is not low-rank: thresholding every pixel breaks the product.
    pixel = create_prompter("lorsp", L, rank=r, factors=K, threshold=0.2)
    with torch.no_grad():
        pixel.B.copy_(prompter.B)
        pixel.A.copy_(prompter.A)
        pixel.beta.fill_(1.0)
    assert int(torch.linalg.matrix_rank(pixel.prompt(x)[0, 0].detach())) > K * r


def test_silent_gates_give_exact_zeros():
    torch.manual_seed(1)
    prompter = _factor(K=2, r=2, threshold=0.5)
    _randomise(prompter)
    with torch.no_grad():
        prompter.gate_weight.zero_()
        prompter.gate_bias.copy_(torch.tensor([[0.1, 2.0, 0.1], [-0.2, 0.0, 0.3]]))  # only channel 1, factor 0
    x = _images()
    prompt = prompter.prompt(x)
    assert torch.count_nonzero(prompt[:, [0, 2]]) == 0  # every gate of channels 0 and 2 is silent
    assert torch.count_nonzero(prompt[:, 1]) == prompt[:, 1].numel()  # a live dense factor
    assert float(prompter.stats()["silent_gates"]) == pytest.approx(5 / 6)
    assert float(prompter.stats()["density"]) == pytest.approx(1 / 3)
    with torch.no_grad():
        prompter.gate_bias.zero_()  # all silent: the prompt vanishes whatever B and A are
    assert torch.count_nonzero(prompter.prompt(x)) == 0
    assert float(prompter.stats()["firing_rate"]) == 0.0


def test_different_images_switch_different_gates():
    torch.manual_seed(2)
    prompter = _factor(K=3, r=2, threshold=0.3)
    _randomise(prompter, gate_scale=4.0)
    x = _varied_images()
    gates = prompter.gates(x)
    assert len({tuple(g.flatten().tolist()) for g in gates}) > 1
    prompt = prompter.prompt(x)
    assert not torch.equal(prompt[0], prompt[-1])
    with torch.no_grad():  # without the instance term every image gets the same gates
        prompter.gate_weight.zero_()
    gates = prompter.gates(x)
    assert all(torch.equal(g, gates[0]) for g in gates)


def test_starts_at_zero_and_the_gates_learn_first():
    """w = b = 0: every gate silent, so the prompt is exactly 0; the surrogate gives the gates the
    gradient ⟨∂L/∂prompt, P_k⟩, while B and A wait (their gradient is g · ..., and g = 0) until a
    gate fires after the first step."""
    torch.manual_seed(3)
    prompter = _factor(K=2, r=2)
    assert torch.equal(prompter.gate_weight, torch.zeros(2, 3))
    assert torch.equal(prompter.gate_bias, torch.zeros(2, 3))
    P = prompter.factors_product().detach()
    assert float(P.std()) == pytest.approx(0.1, rel=0.1)  # FACTOR_INIT_STD
    x = _varied_images()
    prompt = prompter.prompt(x)
    assert torch.count_nonzero(prompt) == 0
    target = torch.randn_like(prompt)
    (prompt * target).sum().backward()
    assert torch.count_nonzero(prompter.gate_bias.grad) == 6
    assert torch.count_nonzero(prompter.gate_weight.grad) == 6
    assert torch.count_nonzero(prompter.B.grad) == 0 and torch.count_nonzero(prompter.A.grad) == 0
    with torch.no_grad():
        prompter.gate_bias.sub_(prompter.gate_bias.grad.sign() * 1.0)  # one signed step opens the gates
    prompter.zero_grad()
    (prompter.prompt(x) * target).sum().backward()
    assert torch.count_nonzero(prompter.B.grad) > 0 and torch.count_nonzero(prompter.A.grad) > 0


def test_trains_toward_a_low_rank_target():
    torch.manual_seed(4)
    prompter = _factor(K=2, r=2, threshold=0.3)
    x = _varied_images(8)
    target = torch.zeros_like(x)
    target[:, 0, : L // 2] = 0.3  # rank 1 per channel
    target[:, 2, :, -4:] = -0.2
    opt = torch.optim.Adam(prompter.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(prompter.prompt(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_mode_is_a_lorsp_knob_and_a_study_setting():
    assert load_study(QUICKSTART).prompt.lorsp_mode == "pixel"  # today's reading stays the default
    assert load_study(QUICKSTART, ["prompt.lorsp_mode=factor"]).prompt.lorsp_mode == "factor"
    searched = load_study(QUICKSTART, ["space.lorsp_mode={type: categorical, choices: [pixel, factor]}"])
    assert searched.resolved().prompt.lorsp_mode == "pixel"
    assert "lorsp_mode" in used_knobs(searched, "lorsp")
    assert "lorsp_mode" not in used_knobs(searched, "lorvp")  # sampled only for lorsp


def test_trains_end_to_end_for_one_epoch_on_digits():
    study = load_study(QUICKSTART, [*TINY, "prompt.method=lorsp", "prompt.lorsp_mode=factor",
                                    "prompt.factors=2", "prompt.rank=2"]).resolved()
    final = train_loop(study, verbose=False)
    assert final["prompt_params"] == 2 * (6 * 8 * 2 + 6)
    for key in ("val_acc", "test_acc", "prompt_density", "firing_rate", "silent_gates", "prompt_energy_nj"):
        assert key in final and final[key] == final[key], key  # present and not NaN
    assert 0.0 <= final["silent_gates"] <= 1.0
    # the energy is factor mode's count at the firing rate the validation measured (K 2, L 8, T 4)
    macs, acs = 2 * 3 * (1 + 4), 3 * 64 + final["firing_rate"] * 2 * 6 * 4 * 64
    assert final["prompt_energy_nj"] == pytest.approx((4.6 * macs + 0.9 * acs) / 1000)


def test_config_and_prompter_agree_on_the_modes():
    from lorsp.config import LORSP_MODES as CONFIG_MODES
    from lorsp.prompts.lorsp import LORSP_MODES

    assert CONFIG_MODES == LORSP_MODES == ("pixel", "factor")
