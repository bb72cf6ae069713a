"""Firing rates of LIF / IF neurons driven by a current that is constant over T steps.

Why this module exists: the spiking prompts only need the *rate* ``mean_t S_t`` of neurons whose
input current does not change over time. SpikingJelly's multi-step neurons handle arbitrary
``[T, ...]`` inputs, so they keep the membrane potential of every step for the backward pass
(memory grows with T) and need a ``[T, ...]`` input. Here:

* the forward loop runs the *same* floating-point operations as SpikingJelly 2.0.0's torch/CPU
  kernel (``spikingjelly/_ops/lif/cpu.py``: charge ``h = v + (x - v) / tau``, fire ``h >= V_th``,
  hard reset to 0), so spikes are bit-identical to ``neuron.LIFNode`` / ``neuron.IFNode`` fed
  ``I.expand(T, ...)``;
* the backward pass is SpikingJelly's surrogate-gradient recursion (Sigmoid surrogate,
  ``detach_reset=False``), which runs backwards in time,
  ``G_t = a_t + r_t k G_{t+1}``, ``dL/dI = (1/tau) sum_t G_t``, with
  ``a_t = (dL/dS_t) sg_t``, ``r_t = (1 - S_t) - h_t sg_t`` and ``k = 1 - 1/tau`` (1 for IF).
  Because ``dL/dS_t = g/T`` is the same for every step when the output is the mean rate, the sum
  can be regrouped as ``sum_s a_s W_s`` with the *forward* recursion ``W_{s+1} = 1 + r_s k W_s``.
  So the forward pass accumulates the local derivative ``D = d rate / d I`` on the fly, saves
  only D, and the backward pass is one multiplication. Peak memory is a handful of tensors of the
  input's size whatever T is, and no per-step state is stored. Gradients equal SpikingJelly's up to
  float rounding (the sum is taken in a different order: ~1e-7 relative to the largest entry).

LoRSP's ±I pairs go through :func:`signed_counts`, which needs only one of the two populations'
simulations (the other provably never fires) and returns integer spike counts for compact storage.

On CUDA the same recursion runs as fused Triton kernels (:mod:`lorsp.prompts.lif_triton`); the
eager loop here is the reference they are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "lif_rate",
    "if_rate",
    "reference_rate",
    "heaviside",
    "surrogate_gradient",
    "signed_counts",
    "count_dtype",
]


def surrogate_gradient(x: Tensor, alpha: float) -> Tensor:
    """SpikingJelly's ``surrogate.Sigmoid(alpha)`` derivative, written the same way for equal rounding."""
    s = torch.sigmoid(alpha * x)
    return (1 - s) * s * alpha


def _simulate(
    current: Tensor,
    timesteps: int,
    threshold: float,
    alpha: float,
    tau: float | None,
    need_grad: bool,
    record: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Run T steps; return (rate, d rate / d current or None).

    The charge/fire/reset lines must stay operation-for-operation equal to SpikingJelly's
    kernel (``(I - v) / tau + v`` is the same IEEE result as ``v + (I - v) / tau``): that is
    what makes the spikes identical. The derivative lines are free to use fused ops.
    ``record`` (tests only) receives the boolean spike map of every step.
    """
    v = torch.zeros_like(current)
    silent = torch.zeros_like(current)  # counting non-spikes saves a negation per step
    quiet = torch.empty_like(current)  # 1 - S_t, as a float so no bool->float copies are needed
    if need_grad:
        acc = torch.zeros_like(current)
        weight = torch.ones_like(current)
        one = torch.ones((), dtype=current.dtype, device=current.device)
        carry = 1.0 if tau is None else 1.0 - 1.0 / tau
    for _ in range(timesteps):
        if tau is None:
            h = torch.add(v, current)
        else:
            h = torch.sub(current, v).div_(tau).add_(v)
        torch.lt(h, threshold, out=quiet)
        if record is not None:
            record.append(quiet == 0)
        silent.add_(quiet)
        if need_grad:
            # u = s (1 - s), s = sigmoid(alpha (h - V_th)); surrogate slope sg = alpha u.
            s = torch.sub(h, threshold).mul_(alpha).sigmoid_()
            u = torch.addcmul(s, s, s, value=-1.0)
            acc.addcmul_(u, weight)
            reset_grad = torch.addcmul(quiet, h, u, value=-alpha)
            weight = torch.addcmul(one, reset_grad, weight, value=carry)
        v = h.mul_(quiet)  # hard reset to 0: equals spike * 0 + (1 - spike) * h exactly
    rate = torch.rsub(silent, float(timesteps)).div_(timesteps)
    if not need_grad:
        return rate, None
    scale = alpha / (timesteps * (1.0 if tau is None else tau))
    return rate, acc.mul_(scale)


def count_dtype(timesteps: int) -> torch.dtype:
    """The smallest integer type that holds a signed spike count in [-T, T]."""
    return torch.int8 if timesteps <= 127 else torch.int16 if timesteps <= 32767 else torch.int32


def signed_counts(
    current: Tensor,
    timesteps: int,
    threshold: float,
    alpha: float,
    tau: float | None,
    need_grad: bool = True,
    *,
    counts_out: Tensor | None = None,
    deriv_out: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A ±I pair of LIF populations (LoRSP's neurons) from one simulation of the active one.

    Returns ``(signed_rate, counts, deriv)``: ``signed_rate = rate(+I) − rate(−I)`` (fp32, bit-equal
    to SpikingJelly's), ``counts = T · signed_rate`` as a small integer tensor
    (:func:`count_dtype`; written into ``counts_out`` when given), and
    ``deriv = d signed_rate / d I = D(I) + D(−I)`` (fp32, into ``deriv_out``; None without grad).

    Why one simulation suffices: with ``v_0 = 0``, a neuron whose current is ≤ 0 has ``h_t ≤ 0``
    at every step in IEEE arithmetic too (each charge ``fl(fl(fl(c − v)/τ) + v)`` rounds
    monotonically between ``v`` and ``c``), so with ``V_th > 0`` it never fires. For each pixel
    only the population receiving ``|I|`` can spike, and it receives ``|I|`` bit for bit
    (negation is exact), so its spikes equal SpikingJelly's. The silent population still has a
    surrogate gradient; it never resets, so its membrane has the closed form
    ``h_t = −|I| (1 − k^t)`` (``−|I| t`` for IF), which is all its derivative needs
    (derivatives match SpikingJelly to float rounding, as for :func:`lif_rate`). This is 18
    elementwise passes per step over one population instead of 26 over two.
    """
    T = int(timesteps)
    thr, alpha = float(threshold), float(alpha)
    leak = tau is not None
    tau_f = float(tau) if leak else 1.0
    k = 1.0 - 1.0 / tau_f if leak else 1.0
    a = current.abs()
    quiet = torch.empty_like(a)
    quiet_steps = torch.zeros_like(a)
    v = torch.empty_like(a)
    h = torch.empty_like(a)
    if need_grad:
        acc = deriv_out if deriv_out is not None else torch.empty_like(a)
        acc.zero_()
        s = torch.empty_like(a)
        r = torch.empty_like(a)
        weight: Tensor | None = None  # W_1 = 1, materialised from step 2 on
        one = torch.ones((), dtype=a.dtype, device=a.device)
        offset = torch.full((), -alpha * thr, dtype=a.dtype, device=a.device)
    for t in range(1, T + 1):
        # charge: identical IEEE operations to SpikingJelly's kernel (see _simulate)
        if t == 1:
            # v = 0: (I - 0) / tau + 0 == I / tau and 0 + I == I exactly
            torch.div(a, tau_f, out=h) if leak else h.copy_(a)
        elif leak:
            torch.sub(a, v, out=h).div_(tau_f).add_(v)
        else:
            torch.add(v, a, out=h)
        torch.lt(h, thr, out=quiet)
        quiet_steps.add_(quiet)
        if need_grad:
            # surrogate: s = sigmoid(alpha (h - V_th)), u = s (1 - s)
            torch.add(offset, h, alpha=alpha, out=s).sigmoid_()
            u = s.addcmul_(s, s, value=-1.0)
            if weight is None:
                acc.add_(u)
            else:
                acc.addcmul_(u, weight)
            if t < T:
                torch.addcmul(quiet, h, u, value=-alpha, out=r)  # r_t = (1 - S_t) - h_t sg_t
                if weight is None:
                    weight = torch.add(one, r, alpha=k)
                else:
                    torch.addcmul(one, r, weight, value=k, out=weight)
        if t < T:
            v, h = h.mul_(quiet), v  # hard reset to 0; the old v's buffer becomes the next h
    if need_grad:
        # the silent population: h_t = -|I| c_t, never a spike, so r_t = 1 - h_t sg_t
        weight = None
        for t in range(1, T + 1):
            c = 1.0 - k**t if leak else float(t)
            torch.add(offset, a, alpha=-alpha * c, out=s).sigmoid_()
            u = s.addcmul_(s, s, value=-1.0)
            if weight is None:
                acc.add_(u)
            else:
                acc.addcmul_(u, weight)
            if t < T:
                torch.addcmul(one, a, u, value=alpha * c, out=r)
                if weight is None:
                    weight = torch.add(one, r, alpha=k)
                else:
                    torch.addcmul(one, r, weight, value=k, out=weight)
        acc.mul_(alpha / (T * tau_f))
    spikes = quiet_steps.neg_().add_(float(T)).copysign_(current)  # ±count; ±0 where I = ±0 (no spikes)
    rate = torch.div(spikes, T)  # fl(count / T), as SpikingJelly's mean
    counts = counts_out if counts_out is not None else torch.empty(a.shape, dtype=count_dtype(T), device=a.device)
    counts.copy_(spikes)
    return rate, counts, (acc if need_grad else None)


class _ConstantCurrentRate(torch.autograd.Function):
    """Autograd wrapper: forward saves only ``d rate / d current`` (see module docstring)."""

    @staticmethod
    def forward(ctx, current, timesteps, threshold, alpha, tau):  # type: ignore[override]
        rate, deriv = _simulate(current, timesteps, threshold, alpha, tau, True)
        ctx.save_for_backward(deriv)
        return rate

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rate):  # type: ignore[override]
        (deriv,) = ctx.saved_tensors
        return grad_rate * deriv, None, None, None, None


def _autocast_off(t: Tensor):
    """Autocast would quantise the membrane arithmetic; every neuron path runs in fp32."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def lif_rate(
    current: Tensor,
    timesteps: int,
    threshold: float,
    alpha: float,
    tau: float | None = None,
) -> Tensor:
    """Mean firing rate over ``timesteps`` of LIF neurons (IF when ``tau is None``) with constant input.

    Equivalent to ``LIFNode(tau, v_threshold=threshold, v_reset=0.0,
    surrogate_function=surrogate.Sigmoid(alpha), detach_reset=False, decay_input=True,
    step_mode='m')(current.expand(T, ...)).mean(0)`` with v starting at 0; returns fp32.
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if tau is not None and not tau > 1.0:
        raise ValueError(f"tau must be > 1 (decay < 1), got {tau}")
    with _autocast_off(current):
        current = current.float()
        args = (int(timesteps), float(threshold), float(alpha), None if tau is None else float(tau))
        if current.requires_grad and torch.is_grad_enabled():
            return _ConstantCurrentRate.apply(current, *args)
        return _simulate(current, *args, False)[0]


def if_rate(current: Tensor, timesteps: int, threshold: float, alpha: float) -> Tensor:
    """Integrate-and-fire (no leak) version of :func:`lif_rate`."""
    return lif_rate(current, timesteps, threshold, alpha, tau=None)


def reference_rate(
    current: Tensor,
    timesteps: int,
    threshold: float,
    alpha: float,
    tau: float | None = None,
) -> Tensor:
    """The same rate through SpikingJelly's own neurons: the ground truth the fast path is tested on.

    Imported lazily so that the fast path works where SpikingJelly is not installed.
    """
    from spikingjelly.activation_based import functional, neuron, surrogate

    common = dict(
        v_threshold=float(threshold),
        v_reset=0.0,
        surrogate_function=surrogate.Sigmoid(alpha=float(alpha)),
        detach_reset=False,
        step_mode="m",
    )
    if tau is None:
        node = neuron.IFNode(**common)
    else:
        node = neuron.LIFNode(tau=float(tau), decay_input=True, **common)
    with _autocast_off(current):
        current = current.float()
        spikes = node(current.expand(timesteps, *current.shape))
        functional.reset_net(node)
    return spikes.mean(0)


class _Heaviside(torch.autograd.Function):
    """H(x) = [x >= 0] forward, Sigmoid-surrogate derivative backward (SpikingJelly's convention)."""

    @staticmethod
    def forward(ctx, x, alpha):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * surrogate_gradient(x, ctx.alpha), None


def heaviside(x: Tensor, alpha: float) -> Tensor:
    """Binary step with a surrogate gradient of slope ``alpha`` (used for Spike-NVPT's mask)."""
    return _Heaviside.apply(x, float(alpha))
