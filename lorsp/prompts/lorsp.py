"""LoRSP: low-rank prompt factors turned into a sparse, instance-specific prompt by LIF neurons."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Prompter, check_count, check_positive, full_precision, low_rank_product
from .lif import lif_rate, reference_rate
from .lorvp import A_INIT_STD


class LoRSPPrompter(Prompter):
    """DESIGN.md §1 LoRSP, K·(6·L·r + 6) parameters.

    For each factor k: ``I_k(x) = B_k·A_k + β_k ⊙ (x − 0.5)``; two LIF populations receive
    ``+I_k`` and ``−I_k`` for T steps (hard reset to 0, τ = 1/decay); the signed rate
    ``ρ_k = mean_t(S⁺ − S⁻)`` is scaled by ``a_k`` and summed over k.

    Init (B = 0, β = 0, a = V_th) makes the current exactly 0, so the prompt starts exactly 0
    (no neuron reaches a positive threshold) while the surrogate still passes a gradient to B
    and β; A, as in LoR-VP, moves once B is non-zero. a = V_th makes one spike per step worth
    one threshold of pixel change, the scale the current itself lives on.

    ``reference=True`` swaps the fast constant-current neuron (:mod:`lorsp.prompts.lif`) for
    SpikingJelly's ``LIFNode``; both give the same spikes, the fast one in flat memory.
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

        Built in one fused multiply-add from the signed factors (negation is exact, so the
        second half is bit-for-bit −I), which avoids materialising I and then concatenating.
        """
        with full_precision(x.device):
            factor = low_rank_product(self.B, self.A)  # [K, 3, L, L]
            factor = torch.cat([factor, -factor])[:, None]  # [2K, 1, 3, L, L]
            beta = torch.cat([self.beta, -self.beta]).float()[:, None, :, None, None]
            centred = (x.float() - 0.5)[None]  # [1, N, 3, L, L]
            return torch.addcmul(factor, beta, centred)

    def signed_rates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ρ: [K, N, 3, L, L], firing rate of every neuron of both populations: [2K, N, 3, L, L])."""
        rate_fn = reference_rate if self.reference else lif_rate
        rates = rate_fn(
            self.currents(x), self.timesteps, self.threshold, self.surrogate_slope, self.tau
        )
        K = self.factors
        return rates[:K] - rates[K:], rates

    def prompt(self, x: Tensor) -> Tensor:
        rho, rates = self.signed_rates(x)
        with full_precision(x.device):
            prompt = torch.einsum("kc,kncij->ncij", self.amplitude.float(), rho)
        self._record(prompt, rates.mean())
        return prompt
