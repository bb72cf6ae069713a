"""Fixed Gaussian pixel noise for robust accuracy (``eval.noise_std``): the same noisy images in
every trial, every epoch, on every device, whatever the batch size or the number of DDP ranks.

Why a counter-based generator instead of ``torch.randn``: a stateful generator's numbers depend
on how many were drawn before, so the noise on an image would change with the batch size, the
shard a DDP rank holds and the device type (CPU and CUDA generators differ). Here each noise value
is a pure function of ``(seed, image index, pixel index)``: an integer hash (Wellons' "lowbias32",
computed exactly in int64 tensor arithmetic, so every device gives the same bits) turned into
uniforms and standard normals by Box-Muller (the last float rounding may differ across devices).
The noise for level σ is σ times the same standard normal field, so σ = 0 is the clean image
exactly and the levels are nested.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["add_noise", "hash32", "standard_normal"]

_MASK32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x846CA68B  # lowbias32's multipliers
_GOLDEN = 0x9E3779B9  # added before hashing: lowbias32(0) = 0, and seed 0 / image 0 are common
#: Samples per chunk so that the int64 temporaries stay near 2^24 elements (128 MB each).
_CHUNK_ELEMENTS = 1 << 24


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x · c) mod 2^32`` for x in [0, 2^32) without overflowing int64: c split in 16-bit halves."""
    low, high = c & 0xFFFF, c >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """Wellons' lowbias32 of int64 values in [0, 2^32), elementwise; the result is in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def _mix(x: Tensor) -> Tensor:
    """``hash32(x + golden)``: a hash without lowbias32's fixed point at 0."""
    return hash32((x + _GOLDEN) & _MASK32)


def _seed_key(seed: int) -> int:
    """A 32-bit key from any integer seed (both halves of a 64-bit seed matter)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    high = int(_mix(torch.tensor([s >> 32], dtype=torch.int64))[0])
    return int(_mix(torch.tensor([(s & _MASK32) ^ high], dtype=torch.int64))[0])


def standard_normal(indices: Tensor, shape: tuple[int, ...], seed: int) -> Tensor:
    """N(0, 1) noise of `shape` for each image index in `indices`: [len(indices), *shape] fp32.

    Values 2p and 2p + 1 of image ``i`` come from one Box-Muller pair: the uniforms
    ``u_j = (h_j + ½) / 2^32`` with ``h_j = mix(mix(i ⊕ key) ⊕ (2p + j))`` (j = 0, 1) give
    ``√(−2 ln u_0) · (cos 2πu_1, sin 2πu_1)``, where ``mix(v) = hash32(v + 0x9E3779B9)`` and
    ``key`` comes from `seed`. The pixel counter enters raw, not through the image's hash: hashing
    both with one function would make image i's key equal counter i's, and a zero input (lowbias32
    maps 0 to 0) would put a 6.8σ value in every image.
    Computed on `indices`' device, in fp32 after the exact integer hash.
    """
    device = indices.device
    count = math.prod(shape)
    pairs = (count + 1) // 2
    key = _seed_key(seed)
    image_keys = _mix((indices.to(torch.int64) & _MASK32) ^ key)  # [N]
    counters = torch.arange(2 * pairs, dtype=torch.int64, device=device).view(pairs, 2)
    out = torch.empty((len(indices), 2 * pairs), dtype=torch.float32, device=device)
    chunk = max(1, _CHUNK_ELEMENTS // (2 * pairs))
    for start in range(0, len(indices), chunk):
        h = _mix(image_keys[start : start + chunk, None, None] ^ counters[None])  # [n, pairs, 2]
        u = (h.float() + 0.5) * 2.0**-32  # fp32 rounding keeps u in (0, 1]: log is finite
        radius = torch.sqrt(-2.0 * torch.log(u[..., 0]))
        angle = (2.0 * math.pi) * u[..., 1]
        pair = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
        out[start : start + chunk] = pair.view(len(pair), 2 * pairs)
    return out[:, :count].reshape(len(indices), *shape)


def add_noise(x: Tensor, normal: Tensor, std: float) -> Tensor:
    """The image as a noisy sensor would deliver it: ``clamp(x + std · normal, 0, 1)`` in pixel space.

    With std = 0 this is `x` itself, bit for bit (x is in [0, 1] already)."""
    return torch.clamp(x + float(std) * normal.to(x.dtype), 0.0, 1.0)
