"""Prompt methods (docs/methods.md) and the fast constant-current LIF/IF against SpikingJelly."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lorsp.methods import method as declaration
from lorsp.prompts import Prompter, create_prompter
from lorsp.prompts.lif import _simulate, if_rate, lif_rate, reference_rate, signed_counts
from tests.conftest import BUILTIN_METHODS, lif_spike_counts

L = 16
#: the fast path runs without SpikingJelly (e.g. on the GPU machine); only comparisons need it
needs_spikingjelly = pytest.mark.skipif(
    importlib.util.find_spec("spikingjelly") is None, reason="SpikingJelly is not installed"
)


def _images(n: int = 4, size: int = L, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _expected_params(method: str, L: int, r: int, K: int, p: int, low_rank: bool) -> int:
    return {
        "none": 0,
        "pad": 3 * (L**2 - (L - 2 * p) ** 2),
        "lorvp": 6 * L * r,
        "lorsp": K * (6 * L * r + 6),
        "spike_nvpt": 6 * L * r + 3 if low_rank else 3 * L**2 + 3,
    }[method]


# --- factory and parameter counts -------------------------------------------------------------


def test_unknown_method_raises() -> None:
    expected = "unknown prompt method 'vpt': choose one of none, pad, lorvp, lorsp, spike_nvpt"
    with pytest.raises(ValueError, match=expected):
        create_prompter("vpt", L)


@pytest.mark.parametrize("bad", [dict(decay=1.0), dict(threshold=0.0), dict(timesteps=0), dict(rank=0)])
def test_invalid_lorsp_knobs_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        create_prompter("lorsp", L, **bad)


def test_pad_wider_than_half_image_raises() -> None:
    with pytest.raises(ValueError):
        create_prompter("pad", 8, pad_width=5)


@pytest.mark.parametrize("L,r,K,p", [(16, 1, 1, 1), (32, 4, 3, 4), (24, 7, 2, 12), (224, 16, 4, 30)])
@pytest.mark.parametrize("low_rank", [False, True])
def test_parameter_counts_match_design(L: int, r: int, K: int, p: int, low_rank: bool) -> None:
    for method in BUILTIN_METHODS:
        prompter = create_prompter(method, L, rank=r, factors=K, pad_width=p, low_rank=low_rank)
        expected = _expected_params(method, L, r, K, p, low_rank)
        assert prompter.num_prompt_params() == expected, method
        assert sum(q.numel() for q in prompter.parameters() if q.requires_grad) == expected


def test_factory_passes_knobs() -> None:
    p = create_prompter("lorsp", L, rank=3, factors=2, timesteps=7, threshold=0.3, decay=0.2, surrogate_slope=2.0)
    assert (p.rank, p.factors, p.timesteps, p.threshold, p.surrogate_slope) == (3, 2, 7, 0.3, 2.0)
    assert p.tau == pytest.approx(5.0)
    s = create_prompter("spike_nvpt", L, noise_std=0.3, low_rank=True, rank=2, timesteps=6)
    assert (s.noise_std, s.low_rank, s.rank, s.timesteps) == (0.3, True, 2, 6)
    assert create_prompter("pad", L, pad_width=2).pad_width == 2


# --- every method: shape, training ------------------------------------------------------------


def _toy_target(x: torch.Tensor) -> torch.Tensor:
    """A sparse target prompt touching every border strip: +0.4 / -0.3 on two regions, 0 elsewhere."""
    target = torch.zeros_like(x)
    target[:, 0, : L // 2] = 0.4
    target[:, 1, :, -4:] = -0.3
    return x + target


@pytest.mark.parametrize("method", sorted(BUILTIN_METHODS))
def test_keeps_shape_and_trains(method: str) -> None:
    torch.manual_seed(0)
    prompter = create_prompter(method, L, rank=2, factors=2, threshold=0.3, pad_width=4)
    x = _images()
    assert prompter(x).shape == x.shape
    if method == "none":
        assert list(prompter.parameters()) == []
        assert torch.equal(prompter(x), x)
        return
    before = [q.detach().clone() for q in prompter.parameters()]
    opt = torch.optim.Adam(prompter.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(prompter(x), _toy_target(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(not torch.equal(b, q) for b, q in zip(before, prompter.parameters()))


@pytest.mark.parametrize("method", sorted(BUILTIN_METHODS))
def test_stats_are_detached_scalars(method: str) -> None:
    prompter = create_prompter(method, L, threshold=0.3)
    prompter(_images())
    stats = prompter.stats()
    assert set(stats) == {"density", "firing_rate"}
    for value in stats.values():
        assert isinstance(value, torch.Tensor) and value.ndim == 0 and not value.requires_grad
        assert 0.0 <= float(value) <= 1.0
    if not prompter.spiking:
        assert float(stats["firing_rate"]) == 0.0


def test_wrong_image_size_raises() -> None:
    with pytest.raises(ValueError, match="expects"):
        create_prompter("lorvp", L)(_images(size=L + 2))


# --- LoR-VP and LoRSP at initialisation -------------------------------------------------------


@pytest.mark.parametrize("method", ["lorvp", "lorsp"])
def test_zero_prompt_at_init_and_gradient_reaches_factors(method: str) -> None:
    torch.manual_seed(1)
    prompter = create_prompter(method, L, rank=3, factors=2)
    x = _images()
    prompt = prompter.prompt(x)
    assert torch.count_nonzero(prompt) == 0
    assert float(prompter.stats()["density"]) == 0.0
    weights = torch.randn(x.shape)
    (prompt * weights).sum().backward()
    assert torch.count_nonzero(prompter.B.grad) > 0  # through the surrogate, for LoRSP
    # A's gradient is B^T g: it exists but is exactly zero while B = 0 (the LoRA/LoR-VP init).
    assert prompter.A.grad is not None and torch.count_nonzero(prompter.A.grad) == 0
    if method == "lorsp":
        assert torch.count_nonzero(prompter.beta.grad) > 0
    torch.optim.SGD(prompter.parameters(), lr=0.1).step()
    prompter.zero_grad()
    (prompter.prompt(x) * weights).sum().backward()
    assert torch.count_nonzero(prompter.A.grad) > 0


@pytest.mark.parametrize("threshold", [0.05, 0.3, 1.7])
def test_lorsp_init_is_the_designed_one(threshold: float) -> None:
    """docs/methods.md: B = 0, A ~ N(0, 0.01²), β = 0, a = V_th; so the prompt is exactly 0 for any image.

    Several thresholds, none of them 1.0, so an amplitude initialised to 1 (or to a constant) is
    caught; the smallest threshold makes a non-zero β fire on the extreme images below.
    """
    torch.manual_seed(9)
    K, r, big = 3, 8, 64
    prompter = create_prompter("lorsp", big, rank=r, factors=K, threshold=threshold, timesteps=4)
    assert torch.equal(prompter.B, torch.zeros(K, 3, big, r))
    assert torch.equal(prompter.beta, torch.zeros(K, 3))
    assert torch.equal(prompter.amplitude, torch.full((K, 3), threshold))
    assert prompter.A.shape == (K, 3, r, big)
    A = prompter.A.detach()
    assert abs(float(A.mean())) < 1e-3 and float(A.std()) == pytest.approx(0.01, rel=0.05)
    # black, white and random images: with β = 0 nothing reaches any threshold
    x = torch.cat([torch.zeros(1, 3, big, big), torch.ones(1, 3, big, big), _images(2, size=big)])
    assert torch.count_nonzero(prompter.prompt(x)) == 0
    assert float(prompter.stats()["firing_rate"]) == 0.0


def test_lorvp_init_is_the_designed_one() -> None:
    """docs/methods.md: B = 0, A ~ N(0, 0.01²); the prompt is the per-channel product B·A on every pixel."""
    torch.manual_seed(10)
    r, big = 8, 64
    prompter = create_prompter("lorvp", big, rank=r)
    assert torch.equal(prompter.B, torch.zeros(3, big, r))
    A = prompter.A.detach()
    assert abs(float(A.mean())) < 1e-3 and float(A.std()) == pytest.approx(0.01, rel=0.05)
    with torch.no_grad():
        prompter.B.normal_(0, 1.0)
    x = _images(2, size=big)
    expected = torch.einsum("cir,crj->cij", prompter.B.detach(), prompter.A.detach())  # channel c: B_c A_c
    assert torch.allclose(prompter.prompt(x)[0], expected, atol=1e-6)
    assert torch.allclose(prompter(x), x + expected, atol=1e-6)  # added to the whole image, every image
    assert float(prompter.stats()["density"]) == 1.0


def test_pad_prompt_is_a_frame_of_width_p() -> None:
    """Bahng et al.: the border of width p is learnt, the (L-2p)² inside is never touched."""
    p = 3
    prompter = create_prompter("pad", L, pad_width=p)
    with torch.no_grad():
        for q in prompter.parameters():
            q.normal_(0, 1.0)
    prompt = prompter.prompt(_images())[0]
    inside = torch.zeros(3, L, L, dtype=torch.bool)
    inside[:, p : L - p, p : L - p] = True
    assert torch.count_nonzero(prompt[inside]) == 0
    assert torch.count_nonzero(prompt[~inside]) == (~inside).sum()  # every border pixel is a parameter
    assert float(prompter.stats()["density"]) == pytest.approx(1 - (L - 2 * p) ** 2 / L**2)


def test_lorsp_prompt_follows_the_formulation() -> None:
    """The whole of docs/methods.md, rebuilt by hand: I_k = B_k·A_k + β_k ⊙ (x − 0.5), a +I_k and a −I_k
    LIF population for T steps, ρ_k = (S⁺ − S⁻)/T, prompt = Σ_k a_k ⊙ ρ_k; firing rate = spikes per
    neuron (both populations) per step; density = fraction of non-zero prompt entries."""
    torch.manual_seed(11)
    K, r, T, thr, decay = 3, 2, 5, 0.3, 0.4
    prompter = create_prompter("lorsp", L, rank=r, factors=K, timesteps=T, threshold=thr, decay=decay)
    with torch.no_grad():
        prompter.B.normal_(0, 1.0)
        prompter.A.normal_(0, 0.5)
        prompter.beta.copy_(torch.tensor([[1.5, -0.5, 0.0], [0.0, 2.0, -1.0], [0.7, 0.0, 3.0]]))
        prompter.amplitude.copy_(torch.tensor([[0.2, -0.4, 0.9], [1.1, 0.3, -0.6], [0.5, 0.8, 0.25]]))
    x = _images(3)
    with torch.no_grad():
        got = prompter.prompt(x)
    B, A, beta, amp = (q.detach() for q in (prompter.B, prompter.A, prompter.beta, prompter.amplitude))
    expected = torch.zeros_like(x)
    spikes = 0.0
    for k in range(K):
        current = torch.einsum("cir,crj->cij", B[k], A[k])[None] + beta[k][None, :, None, None] * (x - 0.5)
        up, down = lif_spike_counts(current, T, thr, 1 / decay), lif_spike_counts(-current, T, thr, 1 / decay)
        expected += amp[k][None, :, None, None] * (up - down) / T
        spikes += float(up.sum() + down.sum())
    assert 0 < torch.count_nonzero(expected) < expected.numel()  # a sparse prompt: the test can see both
    # einsum and matmul may round a current differently: a neuron at an exact tie may flip, no more
    assert (~torch.isclose(got, expected, atol=1e-6)).float().mean() < 1e-3
    rate = float(prompter.stats()["firing_rate"])
    assert rate == pytest.approx(spikes / (2 * K * x.numel() * T), rel=1e-3)
    assert float(prompter.stats()["density"]) == pytest.approx(float((got != 0).float().mean()))


def test_lorsp_trained_prompt_is_sparse() -> None:
    torch.manual_seed(0)
    prompter = create_prompter("lorsp", L, rank=2, threshold=0.3, timesteps=4)
    x = _images()
    opt = torch.optim.Adam(prompter.parameters(), lr=0.05)
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(prompter(x), _toy_target(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    prompt = prompter.prompt(x)
    zeros = (prompt == 0).sum().item()
    assert 0 < zeros < prompt.numel()
    density = float(prompter.stats()["density"])
    assert 0.0 < density < 1.0
    assert density == pytest.approx(1 - zeros / prompt.numel())
    assert 0.0 < float(prompter.stats()["firing_rate"]) < 1.0


def test_lorsp_is_instance_specific_when_beta_nonzero() -> None:
    prompter = create_prompter("lorsp", L, threshold=0.4)
    with torch.no_grad():
        prompter.beta.fill_(2.0)
    x = _images(2)
    prompt = prompter.prompt(x)
    assert prompt.shape == x.shape
    assert not torch.equal(prompt[0], prompt[1])
    with torch.no_grad():  # with beta = 0 the prompt no longer depends on the image
        prompter.beta.zero_()
        prompter.B.normal_(0, 1.0)
        prompter.A.normal_(0, 1.0)
    prompt = prompter.prompt(x)
    assert torch.count_nonzero(prompt) > 0 and torch.equal(prompt[0], prompt[1])


@pytest.mark.parametrize("timesteps", [3, 5])
def test_lorsp_values_are_multiples_of_amplitude_over_t(timesteps: int) -> None:
    torch.manual_seed(2)
    prompter = create_prompter("lorsp", L, rank=4, factors=1, timesteps=timesteps, threshold=0.3, decay=0.3)
    with torch.no_grad():
        prompter.B.normal_(0, 1.0)
        prompter.A.normal_(0, 1.0)
        prompter.beta.normal_(0, 1.0)
        prompter.amplitude.copy_(torch.tensor([[0.7, -1.3, 0.45]]))
    prompt = prompter.prompt(_images())
    steps = prompt / (prompter.amplitude[0].detach()[:, None, None] / timesteps)
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    levels = steps.round().unique()
    assert len(levels) > 2 and levels.abs().max() <= timesteps


def test_lorsp_neurons_run_in_fp32_under_autocast() -> None:
    torch.manual_seed(3)
    prompter = create_prompter("lorsp", L, rank=4, factors=2, threshold=0.3)
    with torch.no_grad():
        prompter.B.normal_(0, 0.5)
        prompter.beta.normal_(0, 1.0)
    x = _images()
    expected = prompter.prompt(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = prompter.prompt(x)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


@needs_spikingjelly
@pytest.mark.parametrize("method,extra", [("lorsp", {"factors": 2}), ("lorsp", {"factors": 2, "lorsp_mode": "factor"}),
                                          ("spike_nvpt", {"noise_std": 0.0})])
def test_fast_prompters_equal_spikingjelly_reference(method: str, extra: dict) -> None:
    torch.manual_seed(4)
    fast = create_prompter(method, L, rank=3, timesteps=5, threshold=0.4, decay=0.3, **extra)
    with torch.no_grad():
        for q in fast.parameters():
            q.add_(torch.randn_like(q) * 0.5)
    ref = create_prompter(method, L, rank=3, timesteps=5, threshold=0.4, decay=0.3, reference=True, **extra)
    ref.load_state_dict(fast.state_dict())
    x = _images()
    weights = torch.randn_like(x)
    outs = []
    for prompter in (fast, ref):
        out = prompter(x)
        (out * weights).sum().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6 * b.grad.abs().max()), name
    assert torch.equal(fast.stats()["firing_rate"], ref.stats()["firing_rate"])


# --- Spike-NVPT -------------------------------------------------------------------------------


@pytest.mark.parametrize("low_rank", [False, True])
def test_spike_nvpt_eval_prompt_is_static_and_cached(low_rank: bool) -> None:
    torch.manual_seed(5)
    prompter = create_prompter("spike_nvpt", L, rank=2, low_rank=low_rank, noise_std=0.2)
    with torch.no_grad():
        prompter.amplitude.fill_(0.1)
    prompter.eval()
    x1, x2 = _images(2, seed=1), _images(3, seed=2)
    p1, p2 = prompter.prompt(x1), prompter.prompt(x2)
    assert p1 is p2  # cached: computed once, the input plays no part
    assert p1.shape == (1, 3, L, L) and torch.count_nonzero(p1) > 0
    assert torch.equal(prompter(x1), x1 + p1)
    assert torch.allclose(p1.abs()[p1 != 0], torch.tensor(0.1))  # a binary ±a prompt
    with torch.no_grad():  # an in-place update (like an optimizer step) invalidates the cache
        prompter.amplitude.mul_(2)
    p3 = prompter.prompt(x1)
    assert p3 is not p1 and torch.allclose(p3, 2 * p1)
    prompter.train()  # training adds fresh noise at every forward
    n1, n2 = prompter.prompt(x1), prompter.prompt(x1)
    assert not torch.equal(n1, n2)


def test_spike_nvpt_starts_at_zero_with_every_neuron_firing() -> None:
    prompter = create_prompter("spike_nvpt", L, timesteps=4, noise_std=0.0)
    prompt = prompter.prompt(_images())
    assert torch.count_nonzero(prompt) == 0
    assert float(prompter.stats()["firing_rate"]) == pytest.approx(0.5)


# --- fast LIF / IF against SpikingJelly -------------------------------------------------------


def _sj_spikes(current: torch.Tensor, T: int, thr: float, alpha: float, tau: float | None) -> torch.Tensor:
    from spikingjelly.activation_based import functional, neuron, surrogate

    kw = dict(v_threshold=thr, v_reset=0.0, surrogate_function=surrogate.Sigmoid(alpha=alpha),
              detach_reset=False, step_mode="m")
    node = neuron.IFNode(**kw) if tau is None else neuron.LIFNode(tau=tau, decay_input=True, **kw)
    spikes = node(current.expand(T, *current.shape))
    functional.reset_net(node)
    return spikes


@needs_spikingjelly
@pytest.mark.parametrize("tau", [None, 1 / 0.95, 2.0, 1 / 0.3, 20.0])
@pytest.mark.parametrize("T", [1, 4, 9, 16])
@pytest.mark.parametrize("thr", [0.15, 1.0])
def test_fast_lif_equals_spikingjelly(tau: float | None, T: int, thr: float) -> None:
    gen = torch.Generator().manual_seed(T * 100 + int(thr * 10))
    current = torch.randn(2, 3, 8, 8, generator=gen) * 2 * thr
    alpha = 3.0
    ref_in = current.clone().requires_grad_()
    spikes = _sj_spikes(ref_in, T, thr, alpha, tau)
    grad_out = torch.randn(current.shape, generator=gen)
    (spikes.mean(0) * grad_out).sum().backward()

    steps: list[torch.Tensor] = []
    _simulate(current, T, thr, alpha, tau, need_grad=False, record=steps)
    assert torch.equal(torch.stack(steps).float(), spikes)  # every spike of every step

    fast_in = current.clone().requires_grad_()
    rate = lif_rate(fast_in, T, thr, alpha, tau)
    assert torch.equal(rate * T, spikes.sum(0))
    (rate * grad_out).sum().backward()
    scale = ref_in.grad.abs().max()
    assert scale > 0
    assert torch.allclose(fast_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(reference_rate(current, T, thr, alpha, tau) * T, spikes.sum(0))


@needs_spikingjelly
@pytest.mark.parametrize("tau", [None, 2.0, 1 / 0.3, 1 / 0.7])
def test_fast_lif_equals_spikingjelly_at_threshold_ties(tau: float | None) -> None:
    """Exact ties (h == V_th fires) and a dense grid, where any change of rounding flips spikes."""
    thr, T = 0.5, 12
    ties = torch.tensor([thr, thr / 2, thr / 4, 2 * thr, thr * 2 / 3, thr / 3])  # h_t == V_th exactly
    current = torch.cat([ties, torch.linspace(-0.1, 3 * thr, 20001)])
    spikes = _sj_spikes(current, T, thr, 4.0, tau)
    steps: list[torch.Tensor] = []
    _simulate(current, T, thr, 4.0, tau, need_grad=False, record=steps)
    assert torch.equal(torch.stack(steps).float(), spikes)
    if tau is None:
        assert torch.equal(spikes[:, :3].sum(0), torch.tensor([12.0, 6.0, 3.0]))


def test_if_rate_is_lif_without_leak() -> None:
    current = torch.linspace(-1, 2, 50)
    assert torch.equal(if_rate(current, 6, 0.5, 4.0), lif_rate(current, 6, 0.5, 4.0, tau=None))
    # IF with a hard reset fires every ceil(V/I) steps
    assert torch.equal(if_rate(torch.tensor([0.5, 0.26, 0.1, -1.0]), 6, 0.5, 4.0), torch.tensor([6, 3, 1, 0]) / 6)


@needs_spikingjelly
def test_fast_lif_saves_one_tensor_whatever_t() -> None:
    current = torch.randn(2, 3, 8, 8)

    def saved_elements(fn, T: int) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel()
            return t

        x = current.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, T, 0.5, 4.0, 2.0)
        return total

    for T in (2, 16):
        assert saved_elements(lif_rate, T) == current.numel()
    assert saved_elements(reference_rate, 16) >= 16 * current.numel()  # what the fast path avoids


def test_fast_lif_no_grad_path_matches_grad_path() -> None:
    current = torch.randn(3, 5, 5) * 0.8
    with torch.no_grad():
        a = lif_rate(current, 7, 0.3, 4.0, 1.5)
    b = lif_rate(current.requires_grad_(), 7, 0.3, 4.0, 1.5)
    assert torch.equal(a, b.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = lif_rate(current.detach().bfloat16().float(), 7, 0.3, 4.0, 1.5)
    assert c.dtype == torch.float32


def test_prompters_are_prompter_subclasses() -> None:
    assert set(BUILTIN_METHODS) == {"none", "pad", "lorvp", "lorsp", "spike_nvpt"}
    for name in BUILTIN_METHODS:
        cls = declaration(name).load()
        assert issubclass(cls, Prompter) and cls.method == name
        assert create_prompter(name, 8).spiking == declaration(name).spiking
    assert {n for n in BUILTIN_METHODS if declaration(n).spiking} == {"lorsp", "spike_nvpt"}


# --- LoRSP's fused prompt: one simulation for the ±I pair, one saved derivative per factor -----


@needs_spikingjelly
@pytest.mark.parametrize("tau", [None, 1 / 0.95, 2.0, 1 / 0.3, 20.0])
@pytest.mark.parametrize("T", [1, 4, 9, 16])
@pytest.mark.parametrize("thr", [0.15, 1.0])
def test_signed_counts_equal_two_spikingjelly_populations(tau: float | None, T: int, thr: float) -> None:
    """rate(+I) - rate(-I) from one simulation of |I|: spikes exact, derivative to float rounding."""
    gen = torch.Generator().manual_seed(T * 1000 + int(thr * 10))
    current = torch.randn(2, 3, 8, 8, generator=gen) * 2 * thr
    current[0, 0, 0, :8] = torch.tensor([thr, -thr, 0.0, -0.0, thr / 2, -thr / 2, 2 * thr, -thr / 3])  # ties, ±0
    ref_in = current.clone().requires_grad_()
    rho = _sj_spikes(ref_in, T, thr, 3.0, tau).mean(0) - _sj_spikes(-ref_in, T, thr, 3.0, tau).mean(0)
    grad_out = torch.randn(current.shape, generator=gen)
    (rho * grad_out).sum().backward()

    rate, counts, deriv = signed_counts(current, T, thr, 3.0, tau)
    assert torch.equal(rate, rho.detach())
    assert counts.dtype == torch.int8 and torch.equal(counts.float(), rate * T)
    scale = ref_in.grad.abs().max()
    assert scale > 0
    assert torch.allclose(grad_out * deriv, ref_in.grad, rtol=1e-5, atol=1e-6 * scale)
    no_grad_rate, no_grad_counts, none = signed_counts(current, T, thr, 3.0, tau, need_grad=False)
    assert none is None and torch.equal(no_grad_rate, rate) and torch.equal(no_grad_counts, counts)


def _saved_bytes(fn, exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs, ``exclude``'s not counted."""
    seen = {t.untyped_storage().data_ptr() for t in exclude}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("K", [1, 3])
def test_lorsp_saves_one_derivative_per_factor_whatever_t(K: int) -> None:
    """Saved for backward: E_k (fp32) + int8 spike counts per factor, the image by reference only."""
    x = _images(2)
    per_factor = x.numel() * (4 + 1)
    for T in (2, 16):
        prompter = create_prompter("lorsp", L, rank=2, factors=K, timesteps=T)
        saved = _saved_bytes(lambda p=prompter: p(x), [*prompter.parameters(), x])
        assert saved <= K * per_factor + 4096, (T, saved)  # + the tiny [K, 3] factors


def test_lorsp_fast_path_without_grad_matches_grad_path() -> None:
    torch.manual_seed(6)
    prompter = create_prompter("lorsp", L, rank=3, factors=2, timesteps=6, threshold=0.3)
    with torch.no_grad():
        prompter.B.normal_(0, 0.5)
        prompter.beta.normal_(0, 1.0)
    x = _images()
    with_grad = prompter.prompt(x)
    stats = {k: v.clone() for k, v in prompter.stats().items()}
    with torch.no_grad():
        without = prompter.prompt(x)
    assert with_grad.requires_grad and not without.requires_grad
    assert torch.equal(with_grad.detach(), without)
    assert all(torch.equal(stats[k], v) for k, v in prompter.stats().items())


@needs_spikingjelly
def test_lorsp_input_gradient_equals_reference() -> None:
    """The fused node also differentiates w.r.t. the image (β ≠ 0), as autograd through SpikingJelly does."""
    torch.manual_seed(7)
    fast = create_prompter("lorsp", L, rank=2, factors=2, timesteps=4, threshold=0.3, decay=0.4)
    with torch.no_grad():
        for q in fast.parameters():
            q.add_(torch.randn_like(q) * 0.5)
    ref = create_prompter("lorsp", L, rank=2, factors=2, timesteps=4, threshold=0.3, decay=0.4, reference=True)
    ref.load_state_dict(fast.state_dict())
    weights = torch.randn(4, 3, L, L)
    grads = []
    for prompter in (fast, ref):
        x = _images().requires_grad_()
        (prompter.prompt(x) * weights).sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6 * grads[1].abs().max())


_TRITON_CHECK = r"""
import os, torch
from lorsp.prompts import create_prompter
torch.manual_seed(0)
L = 12
for T, decay, K in [(5, 0.3, 3), (1, 0.5, 2), (8, 0.95, 1)]:
    p = create_prompter("lorsp", L, rank=3, factors=K, timesteps=T, threshold=0.4, decay=decay)
    with torch.no_grad():
        for q in p.parameters():
            q.add_(torch.randn_like(q) * 0.5)
    x, g = torch.rand(3, 3, L, L), torch.randn(3, 3, L, L)
    out = {}
    for backend in ("torch", "triton"):
        os.environ["LORSP_LIF_BACKEND"] = backend
        p.zero_grad()
        prompt = p(x)
        (prompt * g).sum().backward()
        out[backend] = (prompt.detach(), [q.grad.clone() for q in p.parameters()],
                        {k: v.clone() for k, v in p.stats().items()})
        with torch.no_grad():
            assert torch.equal(p(x), prompt.detach()), backend
    (a, ga, sa), (b, gb, sb) = out["torch"], out["triton"]
    assert torch.allclose(a, b, rtol=0, atol=1e-6), (a - b).abs().max()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), (sa, sb)
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, rtol=1e-5, atol=1e-6 * v.abs().max()), (u - v).abs().max()
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_kernels_equal_eager_path_in_interpreter() -> None:
    """The CUDA kernels, run by Triton's CPU interpreter: same spikes (so same density and firing
    rate), prompt to one rounding, gradients to float rounding."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lorsp_on_cuda_matches_cpu() -> None:
    """The CUDA path (fused Triton kernels where Triton is installed) against the CPU fast path,
    which equals SpikingJelly bit for bit. The current is computed with a fused multiply-add on
    the GPU, so a neuron exactly at a threshold tie may flip: allow a handful in 10^5."""
    torch.manual_seed(8)
    cpu = create_prompter("lorsp", 32, rank=4, factors=4, timesteps=8, threshold=0.3, decay=0.5)
    with torch.no_grad():
        cpu.B.normal_(0, 5.0)
        cpu.beta.normal_(0, 1.0)
    gpu = create_prompter("lorsp", 32, rank=4, factors=4, timesteps=8, threshold=0.3, decay=0.5).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x, g = torch.rand(16, 3, 32, 32), torch.randn(16, 3, 32, 32)
    outs = []
    for prompter, dev in ((cpu, "cpu"), (gpu, "cuda")):
        out = prompter(x.to(dev))
        (out * g.to(dev)).sum().backward()
        outs.append(out.detach().cpu())
    assert (outs[0] != outs[1]).float().mean() < 1e-4
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        assert torch.allclose(a.grad, b.grad.cpu(), rtol=1e-3, atol=1e-4 * a.grad.abs().max()), name
