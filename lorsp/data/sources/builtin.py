"""Data sets that need neither files nor network: scikit-learn's digits and generated gratings.

They let the tests, the quickstart and the GPU checks run anywhere, offline.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lorsp.data.containers import ImageSplit
from lorsp.data.seeding import STREAM_SYNTH, mix
from lorsp.data.sources.base import DatasetSpec, Loaded, LoadOptions

__all__ = ["BUILTIN_DATASETS", "SYNTHETIC_DEFAULT_N", "load_digits", "load_synthetic"]

#: Data sets that need neither files nor network.
BUILTIN_DATASETS: tuple[str, ...] = ("digits", "synthetic")

SYNTHETIC_DEFAULT_N = 2000
_SYNTHETIC_CLASSES = 10
_SYNTHETIC_SIZE = 32


def load_digits(spec: DatasetSpec, options: LoadOptions) -> Loaded:
    """scikit-learn ships these 1797 real handwritten digits, so tests and quickstarts run offline."""
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    img = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8))
    images = img[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(d.target, dtype=torch.int64)
    h, w = img.shape[1:]
    return Loaded(
        parts={"train": ImageSplit(images, labels)},
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        source=f"digits (scikit-learn, {len(labels)} images {h}x{w})",
    )


def _hsv_rgb(hue: Tensor) -> Tensor:
    """Cheap hue -> RGB in [0,1] (a cosine colour wheel); distinct colours for distinct hues."""
    shifts = torch.tensor([0.0, 1.0 / 3.0, 2.0 / 3.0], dtype=hue.dtype)
    return 0.5 + 0.5 * torch.cos(2 * math.pi * (hue[:, None] - shifts[None, :]))


def load_synthetic(spec: DatasetSpec, options: LoadOptions) -> Loaded:
    """``synthetic[:N]``: N class-dependent images a model can learn but not trivially.

    Class c is a sinusoidal grating at orientation c*pi/C with a class frequency and hue; each
    image has a random phase, orientation jitter, a colour partly drawn at random, and pixel noise,
    so neither colour nor orientation alone gives the answer perfectly. ``options.seed`` (the
    split seed) fixes the images.
    """
    n = int(spec.arg) if spec.arg else SYNTHETIC_DEFAULT_N
    seed = options.seed
    c, s = _SYNTHETIC_CLASSES, _SYNTHETIC_SIZE
    g = torch.Generator().manual_seed(mix(seed, STREAM_SYNTH))
    labels = (torch.arange(n) % c)[torch.randperm(n, generator=g)]
    lab = labels.double()
    coords = torch.linspace(-1.0, 1.0, s, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    theta = lab * (math.pi / c) + 0.08 * torch.randn(n, generator=g, dtype=torch.float64)
    freq = 2.0 + (labels % 3).double() + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    proj = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]
    grating = 0.5 + 0.5 * torch.sin(math.pi * freq[:, None, None] * proj + phase[:, None, None])
    colour = 0.6 * _hsv_rgb(lab / c) + 0.4 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    img = 0.15 + 0.7 * grating[:, None] * colour[:, :, None, None]
    img = img + 0.1 * torch.randn(n, 3, s, s, generator=g, dtype=torch.float64)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return Loaded(
        parts={"train": ImageSplit(images, labels.to(torch.int64))},
        num_classes=c,
        class_names=[f"class_{i}" for i in range(c)],
        source=f"synthetic ({n} images {s}x{s}, {c} classes, seed {seed})",
    )
