"""Fused Triton kernels for the LoRSP prompt on CUDA: one pass forward, one pass backward.

Why: on a GPU the eager LIF loop is ~18 elementwise kernels per time step and factor over an
[N, 3, L, L] tensor (at ViT-B/16, 224 px, batch 128: 19 M fp32 values, 77 MB), i.e. tens of
milliseconds of memory traffic per step, far more than the 10 % of a ViT-B step that LoRSP may
cost. These kernels read the image once, keep the membrane state of both populations of all K
factors in registers for the T steps, and write only what the backward pass needs:

* forward: prompt ``Σ_k a_k ρ_k`` [N,3,L,L] fp32, the signed spike counts ``T ρ_k`` (int8,
  [K,N,3,L,L]), ``E_k = dρ_k/dI_k`` (fp32, [K,N,3,L,L]) and per-block spike totals;
* backward: ``dP_k = Σ_n g a_k E_k``, per-block partial sums of ``dβ_k`` and ``da_k``.

The arithmetic is the same as :func:`lorsp.prompts.lif.signed_counts`: the charge uses an
IEEE round-to-nearest division (``div_rn``) so spikes follow SpikingJelly's float operations;
the derivative terms use ordinary (possibly fused) float arithmetic. Under ``TRITON_INTERPRET=1``
the kernels run on CPU tensors, which is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["spike_prompt_forward", "spike_prompt_backward"]

_BLOCK = 512
_BLOCK_BWD = 256


# N == 1 would otherwise be specialised into a constant (and lose ``.to``)
@triton.jit(do_not_specialize=["N"])
def _lif_fwd_kernel(
    x_ptr, factor_ptr, beta_ptr, amp_ptr,
    prompt_ptr, counts_ptr, deriv_ptr, totals_ptr,
    N, HW, K, T,
    thr, alpha, tau, carry, scale, t_f,
    LEAK: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    c = tl.program_id(1)
    n = tl.program_id(2)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    row = (n * 3 + c).to(tl.int64) * HW
    x = tl.load(x_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
    centred = x - 0.5
    prompt = tl.zeros([BLOCK], dtype=tl.float32)
    fired = tl.zeros([BLOCK], dtype=tl.float32)
    plane = N.to(tl.int64) * 3 * HW
    for k in range(K):
        p = tl.load(factor_ptr + (k * 3 + c) * HW + offs, mask=mask, other=0.0)
        b = tl.load(beta_ptr + k * 3 + c)
        amp = tl.load(amp_ptr + k * 3 + c)
        current = p + b * centred
        a = tl.abs(current)
        neg = -a
        v = tl.zeros([BLOCK], dtype=tl.float32)  # the population receiving |I|: may fire
        vs = tl.zeros([BLOCK], dtype=tl.float32)  # the one receiving -|I|: never fires
        quiet_steps = tl.zeros([BLOCK], dtype=tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        w = tl.full([BLOCK], 1.0, dtype=tl.float32)
        ws = tl.full([BLOCK], 1.0, dtype=tl.float32)
        for _t in range(T):
            if LEAK:
                h = tl.math.div_rn(a - v, tau) + v
                hs = tl.math.div_rn(neg - vs, tau) + vs
            else:
                h = v + a
                hs = vs + neg
            quiet = tl.where(h >= thr, 0.0, 1.0)
            quiet_steps += quiet
            if NEED_GRAD:
                s = 1.0 / (1.0 + tl.exp(-alpha * (h - thr)))
                u = s * (1.0 - s)
                acc += u * w
                w = 1.0 + carry * (quiet - alpha * h * u) * w
                ss = 1.0 / (1.0 + tl.exp(-alpha * (hs - thr)))
                us = ss * (1.0 - ss)
                acc += us * ws
                ws = 1.0 + carry * (1.0 - alpha * hs * us) * ws
            v = h * quiet
            vs = hs
        count = T - quiet_steps
        fired += count
        signed = tl.where(current < 0, -count, count)
        prompt += amp * tl.math.div_rn(signed, t_f)  # fl(count / T), as SpikingJelly's mean
        out = k * plane + row + offs
        tl.store(counts_ptr + out, signed.to(tl.int8), mask=mask)
        if NEED_GRAD:
            tl.store(deriv_ptr + out, acc * scale, mask=mask)
    tl.store(prompt_ptr + row + offs, prompt, mask=mask)
    fired = tl.where(mask, fired, 0.0)
    flat = (n * 3 + c) * tl.num_programs(0) + pid
    tl.store(totals_ptr + flat, tl.sum(fired, axis=0).to(tl.int32))


@triton.jit(do_not_specialize=["N"])
def _lif_bwd_kernel(
    grad_ptr, x_ptr, amp_ptr, counts_ptr, deriv_ptr,
    dfactor_ptr, dbeta_ptr, damp_ptr,
    N, HW, K, rows_per_split,
    inv_t,
    K_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid (pixel blocks, channel, batch splits): g and x are read once for all K factors."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    split = tl.program_id(2)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    ks = tl.arange(0, K_PAD)
    kmask = ks < K
    mask2 = kmask[:, None] & mask[None, :]
    amp = tl.load(amp_ptr + ks * 3 + c, mask=kmask, other=0.0)
    plane = N.to(tl.int64) * 3 * HW
    kplane = ks.to(tl.int64)[:, None] * plane
    dfactor = tl.zeros([K_PAD, BLOCK], dtype=tl.float32)
    dbeta = tl.zeros([K_PAD, BLOCK], dtype=tl.float32)
    damp = tl.zeros([K_PAD, BLOCK], dtype=tl.float32)
    first = split * rows_per_split
    last = tl.minimum(first + rows_per_split, N)
    for n in range(first, last):
        row = (n * 3 + c).to(tl.int64) * HW
        g = tl.load(grad_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
        at = kplane + row + offs[None, :]
        e = tl.load(deriv_ptr + at, mask=mask2, other=0.0)
        cnt = tl.load(counts_ptr + at, mask=mask2, other=0).to(tl.float32)
        gi = g[None, :] * amp[:, None] * e
        dfactor += gi
        dbeta += gi * (x - 0.5)[None, :]
        damp += g[None, :] * cnt
    out = split.to(tl.int64) * K * 3 * HW + (ks[:, None] * 3 + c) * HW + offs[None, :]
    tl.store(dfactor_ptr + out, dfactor, mask=mask2)
    flat = ((split * K + ks) * 3 + c) * tl.num_programs(0) + pid
    tl.store(dbeta_ptr + flat, tl.sum(dbeta, axis=1), mask=kmask)
    tl.store(damp_ptr + flat, tl.sum(damp, axis=1) * inv_t, mask=kmask)


def spike_prompt_forward(
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
    """(prompt [N,3,L,L] fp32, signed counts int8 [K,N,3,L,L], E fp32 or None, spike total int64 0-dim)."""
    if timesteps > 127:
        raise ValueError("the fused kernel stores spike counts as int8: timesteps must be <= 127")
    x = x.contiguous()
    N, C, H, W = x.shape
    K = factor.shape[0]
    HW = H * W
    dev = x.device
    prompt = torch.empty((N, C, H, W), dtype=torch.float32, device=dev)
    counts = torch.empty((K, N, C, H, W), dtype=torch.int8, device=dev)
    deriv = torch.empty((K, N, C, H, W), dtype=torch.float32, device=dev) if need_grad else prompt
    grid = (triton.cdiv(HW, _BLOCK), C, N)
    totals = torch.empty(grid[0] * C * N, dtype=torch.int32, device=dev)
    leak = tau is not None
    tau_f = float(tau) if leak else 1.0
    _lif_fwd_kernel[grid](
        x, factor.float().contiguous(), beta.float().contiguous(), amplitude.float().contiguous(),
        prompt, counts, deriv, totals,
        N, HW, K, int(timesteps),
        float(threshold), float(alpha), tau_f, 1.0 - 1.0 / tau_f if leak else 1.0,
        float(alpha) / (timesteps * tau_f), float(timesteps),
        LEAK=leak, NEED_GRAD=need_grad, BLOCK=_BLOCK,
    )
    return prompt, counts, (deriv if need_grad else None), totals.sum(dtype=torch.int64)


def spike_prompt_backward(
    grad: Tensor, x: Tensor, amplitude: Tensor, counts: Tensor, deriv: Tensor, timesteps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(d factor [K,3,L,L], d beta [K,3], d amplitude [K,3]) from the prompt's gradient."""
    grad = grad.contiguous()
    x = x.contiguous()
    K, N, C, H, W = counts.shape
    HW = H * W
    dev = grad.device
    blocks = triton.cdiv(HW, _BLOCK_BWD)
    # enough programs to fill a GPU: split the batch when there are few pixel blocks
    splits = max(1, min(N, triton.cdiv(1024, blocks * C)))
    rows = triton.cdiv(N, splits)
    splits = triton.cdiv(N, rows)
    dfactor = torch.empty((splits, K, C, H, W), dtype=torch.float32, device=dev)
    dbeta = torch.empty((splits, K, C, blocks), dtype=torch.float32, device=dev)
    damp = torch.empty((splits, K, C, blocks), dtype=torch.float32, device=dev)
    _lif_bwd_kernel[(blocks, C, splits)](
        grad, x, amplitude.float().contiguous(), counts, deriv,
        dfactor, dbeta, damp,
        N, HW, K, rows, 1.0 / timesteps,
        K_PAD=triton.next_power_of_2(K), BLOCK=_BLOCK_BWD,
    )
    return dfactor.sum(0), dbeta.sum((0, 3)), damp.sum((0, 3))
