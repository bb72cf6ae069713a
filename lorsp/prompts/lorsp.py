"""LoRSP: low-rank prompt factors turned into a sparse, instance-specific prompt by LIF neurons."""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn

from .base import Prompter, check_count, check_positive, full_precision, low_rank_product
from .lif import count_dtype, lif_rate, reference_rate, signed_counts
from .lorvp import A_INIT_STD

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


def mix(prompt: Optional[Tensor], rho: Tensor, amplitude: Tensor) -> Tensor:
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
    tau: Optional[float],
    need_grad: bool,
) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """(prompt [N,3,L,L], signed counts [K,N,3,L,L] int, E [K,N,3,L,L] fp32 or None, spike total)."""
    if _use_triton(x.device) and timesteps <= 127:
        from .lif_triton import spike_prompt_forward

        return spike_prompt_forward(x, factor, beta, amplitude, timesteps, threshold, alpha, tau, need_grad)
    centred = x.float() - 0.5
    K = factor.shape[0]
    counts = torch.empty((K, *x.shape), dtype=count_dtype(timesteps), device=x.device)
    deriv = torch.empty((K, *x.shape), dtype=torch.float32, device=x.device) if need_grad else None
    prompt: Optional[Tensor] = None
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
    """DESIGN.md §1 LoRSP, K·(6·L·r + 6) parameters.

    For each factor k: ``I_k(x) = B_k·A_k + β_k ⊙ (x − 0.5)``; two LIF populations receive
    ``+I_k`` and ``−I_k`` for T steps (hard reset to 0, τ = 1/decay); the signed rate
    ``ρ_k = mean_t(S⁺ − S⁻)`` is scaled by ``a_k`` and summed over k.

    Init (B = 0, β = 0, a = V_th) makes the current exactly 0, so the prompt starts exactly 0
    (no neuron reaches a positive threshold) while the surrogate still passes a gradient to B
    and β; A, as in LoR-VP, moves once B is non-zero. a = V_th makes one spike per step worth
    one threshold of pixel change, the scale the current itself lives on.

    Fast path (default): one autograd node for the whole prompt (:class:`_SpikePrompt`). Per
    factor it simulates only the population that can fire (the one receiving ``|I_k|``; see
    :func:`lorsp.prompts.lif.signed_counts`), and saves one fp32 ``dρ_k/dI_k`` plus int8 spike
    counts, whatever T is. On CUDA it runs as two fused Triton kernels
    (:mod:`lorsp.prompts.lif_triton`; ``LORSP_LIF_BACKEND=torch`` forces the eager loop).
    ``reference=True`` swaps in SpikingJelly's ``LIFNode`` on the ``[+I, −I]`` currents: the same
    spikes (tested bit for bit on CPU), gradients equal to float rounding.
    """

    method = "lorsp"
    spiking = True
    knobs = ("rank", "factors", "timesteps", "threshold", "decay", "surrogate_slope")

    def __init__(
        self,
        image_size: int,
        rank: int = 4,
        factors: int = 1,
        timesteps: int = 4,
        threshold: float = 0.5,
        decay: float = 0.5,
        surrogate_slope: float = 4.0,
        reference: bool = False,
    ) -> None:
        super().__init__(image_size)
        self.rank = check_count("rank", rank)
        self.factors = check_count("factors", factors)
        self.timesteps = check_count("timesteps", timesteps)
        check_positive("threshold", threshold)
        check_positive("surrogate_slope", surrogate_slope)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1) so that tau = 1/decay > 1, got {decay}")
        self.threshold = float(threshold)
        self.decay = float(decay)
        self.tau = 1.0 / self.decay
        self.surrogate_slope = float(surrogate_slope)
        self.reference = bool(reference)

        K, L, r = self.factors, self.image_size, self.rank
        self.B = nn.Parameter(torch.zeros(K, 3, L, r))
        self.A = nn.Parameter(torch.randn(K, 3, r, L) * A_INIT_STD)
        self.beta = nn.Parameter(torch.zeros(K, 3))
        self.amplitude = nn.Parameter(torch.full((K, 3), self.threshold))

    def currents(self, x: Tensor) -> Tensor:
        """Input currents of both populations, ``[+I_1..+I_K, −I_1..−I_K]``: [2K, N, 3, L, L] fp32.

        (For the reference path and for inspection; the fast path never builds this tensor.)
        """
        with full_precision(x.device):
            factor = low_rank_product(self.B, self.A)  # [K, 3, L, L]
            beta = self.beta.float()
            centred = x.float() - 0.5
            current = torch.stack([factor_current(factor[k], beta[k], centred) for k in range(self.factors)])
            return torch.cat([current, -current])  # negation is exact: the second half is bit-for-bit −I

    def signed_rates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ρ: [K, N, 3, L, L], firing rate of every neuron of both populations: [2K, N, 3, L, L])."""
        rate_fn = reference_rate if self.reference else lif_rate
        rates = rate_fn(
            self.currents(x), self.timesteps, self.threshold, self.surrogate_slope, self.tau
        )
        K = self.factors
        return rates[:K] - rates[K:], rates

    def prompt(self, x: Tensor) -> Tensor:
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
