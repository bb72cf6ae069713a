"""Counter-based Gaussian pixel noise (lorsp.noise): exact hash, N(0, 1) values, fixed per image."""

from __future__ import annotations

import random

import pytest
import torch

from lorsp.noise import add_noise, hash32, standard_normal


def _lowbias32(x: int) -> int:
    """Wellons' lowbias32 in plain Python integers, written from its C source."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_hash_equals_the_reference_bit_for_bit():
    rng = random.Random(0)
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1] + [rng.randrange(2**32) for _ in range(2000)]
    got = hash32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_lowbias32(v) for v in values]


def test_noise_is_a_function_of_seed_and_image_index_only():
    shape = (3, 5, 5)
    everything = standard_normal(torch.arange(40), shape, seed=7)
    # any subset, in any order, in any batch: the same numbers for the same image
    subset = torch.tensor([33, 2, 17, 2])
    assert torch.equal(standard_normal(subset, shape, seed=7), everything[subset])
    assert not torch.equal(standard_normal(subset, shape, seed=8), everything[subset])
    assert not torch.equal(everything[0], everything[1])


def test_noise_field_is_standard_normal():
    z = standard_normal(torch.arange(300), (3, 16, 16), seed=0).flatten().double()
    assert abs(float(z.mean())) < 0.01 and float(z.std()) == pytest.approx(1.0, abs=0.01)
    assert float((z**4).mean()) == pytest.approx(3.0, abs=0.1)  # no heavy tail (a hash that returns 0 often)
    assert float(z.abs().max()) < 5.5
    tail = float((z.abs() > 1.959964).double().mean())  # two-sided 5 % of N(0, 1)
    assert tail == pytest.approx(0.05, abs=0.004)
    neighbours = float((z[:-1] * z[1:]).mean())  # Box-Muller pairs must not correlate
    assert abs(neighbours) < 0.01


def test_sigma_zero_adds_nothing_and_noise_is_clamped():
    x = torch.rand(2, 3, 4, 4)
    z = standard_normal(torch.arange(2), (3, 4, 4), seed=0)
    assert torch.equal(add_noise(x, z, 0.0), x)
    noisy = add_noise(x, z, 3.0)
    assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0
    inside = (noisy > 0) & (noisy < 1)
    assert torch.allclose(noisy[inside], (x + 3.0 * z)[inside])
