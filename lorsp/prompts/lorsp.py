"""LoRSP: low-rank prompt factors turned into a sparse, instance-specific prompt by LIF neurons.

Two readings of the paper's abstract (docs/methods.md, "LoRSP"), chosen by ``lorsp_mode``:
``pixel`` thresholds every pixel of each factor's current (sparse, not low-rank), ``factor`` lets
one LIF pair per image, factor and channel switch the whole factor on or off (low-rank, sparse in
factors).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from lorsp.methods import LORSP_MODE

from .base import Prompter, full_precision, low_rank_product
from .energy import EnergyOps
from .lif import count_dtype, lif_rate, reference_rate, signed_counts
from .lorvp import A_INIT_STD

#: ``lorsp_mode`` choices, as declared in :data:`lorsp.methods.LORSP_MODE`
LORSP_MODES: tuple[str, ...] = LORSP_MODE.choices
#: factor mode: std of the entries of each P_k = B_k·A_k at initialisation, in [0, 1] pixel units.
#: The gates start silent, so the prompt is 0 whatever P_k is; P_k must not be 0, because the
#: gates' gradient is the projection of the loss gradient on P_k.
FACTOR_INIT_STD = 0.1

#: ``LORSP_LIF_BACKEND``: ``auto`` (fused Triton kernels on CUDA when Triton is importable, eager
#: torch otherwise), ``torch`` (always eager) or ``triton`` (always the kernels; on CPU tensors
#: this needs ``TRITON_INTERPRET=1``, which is how the tests check them without a GPU).
BACKEND_ENV = "LORSP_LIF_BACKEND"


def _use_triton(device: torch.device) -> bool:
    choice = os.environ.get(BACKEND_ENV, "auto").lower()
    if choice not in ("auto", "torch", "triton"):
        raise ValueError(f"{BACKEND_ENV} must be auto, torch or triton, got {choice!r}")
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        if choice == "triton":
            raise
        return False
    return True


def factor_current(factor: Tensor, beta: Tensor, centred: Tensor) -> Tensor:
    """``I_k = P_k + β_k ⊙ (x − 0.5)`` for one factor: [3,L,L], [3], [N,3,L,L] -> [N,3,L,L] fp32.

    The fast and the reference path both build currents with this one call on equal shapes, so
    their neurons receive bit-identical input.
    """
    return torch.addcmul(factor, beta[:, None, None], centred)


def mix(prompt: Tensor | None, rho: Tensor, amplitude: Tensor) -> Tensor:
    """``prompt + a_k ⊙ ρ_k`` (``a_k ⊙ ρ_k`` for the first factor), in factor order, as both paths do."""
    weight = amplitude[:, None, None]
    if prompt is None:
        return rho * weight
    return prompt.addcmul_(rho, weight)


def firing_rate(spikes: Tensor, neurons: int, timesteps: int) -> Tensor:
    """Spikes per neuron per step from an exact spike total (any dtype): 0-dim fp32, no host sync."""
    return (spikes.double() / (float(neurons) * timesteps)).float()


class _SpikePrompt(torch.autograd.Function):
    """The whole LoRSP prompt as one autograd node that saves, per factor, one fp32 [N,3,L,L]
    derivative ``E_k = dρ_k/dI_k`` and the int8 signed spike counts (for ``da_k``); the image is
    saved by reference (the training step holds it anyway). Peak memory therefore does not grow
    with T, and no [2K, N, 3, L, L] tensor of both populations is ever materialised.
    """

    @staticmethod
    def forward(ctx, x, factor, beta, amplitude, timesteps, threshold, alpha, tau):  # type: ignore[override]
        prompt, counts, deriv, spikes = _spike_prompt(
            x, factor, beta, amplitude, timesteps, threshold, alpha, tau, need_grad=True
        )
        ctx.save_for_backward(x, beta, amplitude, counts, deriv)
        ctx.timesteps = timesteps
        ctx.mark_non_differentiable(spikes)
        return prompt, spikes

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _):  # type: ignore[override]
        x, beta, amplitude, counts, deriv = ctx.saved_tensors
        T = ctx.timesteps
        grad = grad.float()
        need_x = ctx.needs_input_grad[0]
        if _use_triton(grad.device) and not need_x and counts.dtype == torch.int8:  # as the forward chose
            from .lif_triton import spike_prompt_backward

            d_factor, d_beta, d_amp = spike_prompt_backward(grad, x, amplitude, counts, deriv, T)
            return None, d_factor, d_beta, d_amp, None, None, None, None
        centred = x.float() - 0.5
        K = counts.shape[0]
        d_factor = torch.empty((K, *x.shape[1:]), dtype=torch.float32, device=grad.device)
        d_beta = torch.empty_like(beta, dtype=torch.float32)
        d_amp = torch.empty_like(amplitude, dtype=torch.float32)
        d_x = torch.zeros_like(centred) if need_x else None
        for k in range(K):
            d_amp[k] = torch.mul(grad, counts[k]).sum((0, 2, 3)).div_(T)
            d_current = torch.mul(grad, deriv[k]).mul_(amplitude[k][:, None, None])
            torch.sum(d_current, 0, out=d_factor[k])
            d_beta[k] = torch.mul(d_current, centred).sum((0, 2, 3))
            if d_x is not None:
                d_x.addcmul_(d_current, beta[k][:, None, None])
        return d_x, d_factor, d_beta, d_amp, None, None, None, None


def _spike_prompt(
    x: Tensor,
    factor: Tensor,
    beta: Tensor,
    amplitude: Tensor,
    timesteps: int,
    threshold: float,
    alpha: float,
    tau: float | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """(prompt [N,3,L,L], signed counts [K,N,3,L,L] int, E [K,N,3,L,L] fp32 or None, spike total)."""
    if _use_triton(x.device) and timesteps <= 127:
        from .lif_triton import spike_prompt_forward

        return spike_prompt_forward(x, factor, beta, amplitude, timesteps, threshold, alpha, tau, need_grad)
    centred = x.float() - 0.5
    K = factor.shape[0]
    counts = torch.empty((K, *x.shape), dtype=count_dtype(timesteps), device=x.device)
    deriv = torch.empty((K, *x.shape), dtype=torch.float32, device=x.device) if need_grad else None
    prompt: Tensor | None = None
    for k in range(K):
        current = factor_current(factor[k], beta[k], centred)
        rho, _, _ = signed_counts(
            current, timesteps, threshold, alpha, tau, need_grad,
            counts_out=counts[k], deriv_out=None if deriv is None else deriv[k],
        )
        prompt = mix(prompt, rho, amplitude[k])
        del current, rho
    spikes = counts.abs().sum(dtype=torch.int64)
    return prompt, counts, deriv, spikes


class LoRSPPrompter(Prompter):
    """docs/methods.md LoRSP, K·(6·L·r + 6) parameters in either mode.

    ``lorsp_mode="pixel"`` (default). For each factor k: ``I_k(x) = B_k·A_k + β_k ⊙ (x − 0.5)``;
    two LIF populations receive ``+I_k`` and ``−I_k`` for T steps (hard reset to 0, τ = 1/decay);
    the signed rate ``ρ_k = mean_t(S⁺ − S⁻)`` is scaled by ``a_k`` and summed over k.
    Parameters: B_k, A_k (6·L·r), β_k, a_k (3 + 3) per factor.

    Init (B = 0, β = 0, a = V_th) makes the current exactly 0, so the prompt starts exactly 0
    (no neuron reaches a positive threshold) while the surrogate still passes a gradient to B
    and β; A, as in LoR-VP, moves once B is non-zero. a = V_th makes one spike per step worth
    one threshold of pixel change, the scale the current itself lives on.

    ``lorsp_mode="factor"``: the neurons decide, per image, factor and channel, how strongly the
    whole rank-r factor ``P_{k,c} = B_{k,c}·A_{k,c}`` is switched on:
    ``I_{k,c}(x) = w_{k,c} · mean(x_c − 0.5) + b_{k,c}``, a ±I LIF pair gives the signed rate
    ``g_{k,c}(x) ∈ [−1, 1]`` (multiples of 1/T), and ``prompt_c(x) = Σ_k g_{k,c}(x) · P_{k,c}``.
    Each channel's prompt is then ``[B_1..B_K] diag(g) [A_1; ..; A_K]``: rank ≤ K·r, and exactly 0
    where every gate is silent. Parameters: B_k, A_k (6·L·r), w_k, b_k (3 + 3) per factor, the same
    K·(6·L·r + 6) as pixel mode (P_k absorbs the amplitude). Init: w = b = 0, so every gate is
    silent and the prompt is exactly 0, while the surrogate passes the gates a gradient
    ``⟨∂L/∂prompt_c, P_{k,c}⟩``; B and A are ~N(0, s/√r) each, so P_k's entries have std
    s = :data:`FACTOR_INIT_STD`, and they get their first gradient once a gate fires (the mirror
    image of pixel mode, where the neurons' input starts at 0 and B gets the first gradient).

    Fast path (default, pixel mode): one autograd node for the whole prompt (:class:`_SpikePrompt`).
    Per factor it simulates only the population that can fire (the one receiving ``|I_k|``; see
    :func:`lorsp.prompts.lif.signed_counts`), and saves one fp32 ``dρ_k/dI_k`` plus int8 spike
    counts, whatever T is. On CUDA it runs as two fused Triton kernels
    (:mod:`lorsp.prompts.lif_triton`; ``LORSP_LIF_BACKEND=torch`` forces the eager loop). Factor
    mode has only N·K·3 neurons per batch and uses :func:`lorsp.prompts.lif.lif_rate` directly.
    ``reference=True`` swaps in SpikingJelly's ``LIFNode`` on the ``[+I, −I]`` currents: the same
    spikes (tested bit for bit on CPU), gradients equal to float rounding.
    """

    method = "lorsp"

    def __init__(
        self,
        image_size: int,
        *,
        rank: int,
        factors: int,
        timesteps: int,
        threshold: float,
        decay: float,
        surrogate_slope: float,
        lorsp_mode: str,
        reference: bool = False,
    ) -> None:
        super().__init__(image_size)
        self.rank = int(rank)
        self.factors = int(factors)
        self.timesteps = int(timesteps)
        self.threshold = float(threshold)
        self.decay = float(decay)
        self.tau = 1.0 / self.decay
        self.surrogate_slope = float(surrogate_slope)
        self.mode = lorsp_mode
        self.reference = bool(reference)

        K, L, r = self.factors, self.image_size, self.rank
        if self.mode == "pixel":
            self.B = nn.Parameter(torch.zeros(K, 3, L, r))
            self.A = nn.Parameter(torch.randn(K, 3, r, L) * A_INIT_STD)
            self.beta = nn.Parameter(torch.zeros(K, 3))
            self.amplitude = nn.Parameter(torch.full((K, 3), self.threshold))
        else:
            each = math.sqrt(FACTOR_INIT_STD / math.sqrt(r))  # std(B·A entry) = √r · each² = s
            self.B = nn.Parameter(torch.randn(K, 3, L, r) * each)
            self.A = nn.Parameter(torch.randn(K, 3, r, L) * each)
            self.gate_weight = nn.Parameter(torch.zeros(K, 3))
            self.gate_bias = nn.Parameter(torch.zeros(K, 3))
        self._silent_gates: Tensor = torch.zeros(())

    def currents(self, x: Tensor) -> Tensor:
        """Input currents of both populations, ``[+I_1..+I_K, −I_1..−I_K]``: [2K, N, 3, L, L] fp32
        in pixel mode, [2K, N, 3] (one gate per factor and channel) in factor mode.

        (For the reference path and for inspection; the fast pixel path never builds this tensor.)
        """
        with full_precision(x.device):
            if self.mode == "factor":
                current = self.gate_currents(x).transpose(0, 1)  # [K, N, 3]
                return torch.cat([current, -current])
            factor = low_rank_product(self.B, self.A)  # [K, 3, L, L]
            beta = self.beta.float()
            centred = x.float() - 0.5
            current = torch.stack([factor_current(factor[k], beta[k], centred) for k in range(self.factors)])
            return torch.cat([current, -current])  # negation is exact: the second half is bit-for-bit −I

    def gate_currents(self, x: Tensor) -> Tensor:
        """Factor mode: ``I_{k,c}(x) = w_{k,c} · mean(x_c − 0.5) + b_{k,c}``, [N, K, 3] fp32."""
        centred_mean = x.float().mean(dim=(2, 3)) - 0.5  # [N, 3]
        return torch.addcmul(self.gate_bias.float(), self.gate_weight.float(), centred_mean[:, None, :])

    def signed_rates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ρ: [K, N, 3, L, L] or, factor mode, the gates [K, N, 3]; firing rate of every neuron of
        both populations: [2K, ...])."""
        rate_fn = reference_rate if self.reference else lif_rate
        rates = rate_fn(
            self.currents(x), self.timesteps, self.threshold, self.surrogate_slope, self.tau
        )
        K = self.factors
        return rates[:K] - rates[K:], rates

    def gates(self, x: Tensor) -> Tensor:
        """Factor mode: the signed gate rates g_{k,c}(x) ∈ [−1, 1], [N, K, 3]."""
        if self.mode != "factor":
            raise ValueError("gates exist in lorsp_mode='factor' only")
        with full_precision(x.device):
            return self.signed_rates(x)[0].transpose(0, 1)

    def factors_product(self) -> Tensor:
        """P_k = B_k·A_k per channel, [K, 3, L, L] fp32 (static: precomputable at inference)."""
        return low_rank_product(self.B, self.A)

    def prompt(self, x: Tensor) -> Tensor:
        if self.mode == "factor":
            return self._factor_prompt(x)
        T = self.timesteps
        neurons = 2 * self.factors * x[0].numel() * x.shape[0]
        with full_precision(x.device):
            if self.reference:
                rho, rates = self.signed_rates(x)
                amplitude = self.amplitude.float()
                prompt = None
                for k in range(self.factors):
                    prompt = mix(prompt, rho[k], amplitude[k])
                spikes = torch.round(rates.detach().double() * T).sum()
            else:
                factor = low_rank_product(self.B, self.A)
                args = (self.beta.float(), self.amplitude.float(), T, self.threshold, self.surrogate_slope, self.tau)
                if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
                    prompt, spikes = _SpikePrompt.apply(x, factor, *args)
                else:
                    prompt, _, _, spikes = _spike_prompt(x, factor, *args, need_grad=False)
        self._record(prompt, firing_rate(spikes, neurons, T))
        return prompt

    def _factor_prompt(self, x: Tensor) -> Tensor:
        T = self.timesteps
        with full_precision(x.device):
            rho, rates = self.signed_rates(x)  # [K, N, 3], [2K, N, 3]
            prompt = torch.einsum("knc,kcij->ncij", rho, self.factors_product())
            spikes = torch.round(rates.detach().double() * T).sum()
        self._record(prompt, firing_rate(spikes, rates.numel(), T))
        with torch.no_grad():
            self._silent_gates = (rho.detach() == 0).float().mean()
        return prompt

    def spike_counts(self, x: Tensor) -> Tensor:
        """Spikes per neuron pair over the T steps, summed over factors: [N, 3, L, L] in pixel mode
        (one ±I pair per pixel, channel and factor), [N, K, 3] in factor mode (one pair per gate).

        Pixel mode runs the same neurons as :meth:`prompt` (only the population receiving |I| can
        fire, so |signed count| is the pair's spike total)."""
        T, K = self.timesteps, self.factors
        with torch.no_grad(), full_precision(x.device):
            if self.mode == "pixel" and not self.reference:
                args = (self.beta.float(), self.amplitude.float(), T, self.threshold, self.surrogate_slope, self.tau)
                _, counts, _, _ = _spike_prompt(x, self.factors_product(), *args, need_grad=False)
                return counts.abs().sum(0, dtype=torch.float32)
            _, rates = self.signed_rates(x)  # [2K, N, 3, L, L] or [2K, N, 3]
            spikes = torch.round(rates * T)
            total = spikes[:K] + spikes[K:]
            return total.sum(0) if self.mode == "pixel" else total.transpose(0, 1)

    def stats(self) -> dict[str, Tensor]:
        """Density and firing rate; in factor mode also ``silent_gates``, the fraction of
        (image, factor, channel) gates with no net spike (factors switched off)."""
        stats = super().stats()
        if self.mode == "factor":
            stats["silent_gates"] = self._silent_gates
        return stats

    def energy_ops(self, firing_rate: float) -> EnergyOps:
        """Per image, with ρ = the measured firing rate (spikes per neuron per step, both populations).

        The products B_k·A_k are static (computed once). Pixel mode: the current
        ``β·x + (P − 0.5β)`` is one MAC per factor and entry (the 1/τ of the first charge folded
        into β and P), each of T leaky membrane updates ``v ← (1 − 1/τ)·v + I/τ`` is one MAC on a
        real value (one neuron per entry: only the population receiving |I| can fire), and every
        spike adds ±a_k/T into its pixel of the image (one AC): MACs = K·3L²·(1 + T),
        ACs = ρ·2K·3L²·T. Factor mode: the channel sums are 3L² ACs, the gate currents 3K MACs,
        the gates' membranes 3K·T MACs, and every gate spike adds the stored ±P_{k,c}/T to its
        channel (L² ACs): MACs = 3K·(1 + T), ACs = 3L² + ρ·6K·T·L².
        """
        K, T, area = self.factors, self.timesteps, self.image_size**2
        if self.mode == "pixel":
            neurons = K * 3 * area
            return EnergyOps(macs=float(neurons * (1 + T)), acs=firing_rate * 2 * neurons * T)
        gates = K * 3
        return EnergyOps(macs=float(gates * (1 + T)), acs=3 * area + firing_rate * 2 * gates * T * area)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"
