"""Seeded, stratified train / validation / test splits: the evaluation protocol in code.

The splits are a pure function of the loaded parts and the seed. A data set's official test (and
validation) split is used as is; without one, ``test_fraction`` of the pool becomes the test split
first and validation is taken from the rest, so the test split never depends on ``val_fraction``
or ``max_train``. Every split is stratified by class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lorsp.data.containers import ImageSplit, Splits
from lorsp.data.seeding import STREAM_CAP, STREAM_TEST, STREAM_VAL, mix
from lorsp.errors import DataError

__all__ = ["make_splits", "stratified_order", "take"]


def stratified_order(labels: Tensor, gen: torch.Generator) -> Tensor:
    """A random permutation of ``range(len(labels))`` whose every prefix is class-balanced.

    Each sample gets the key (rank within its class + u_class) / class size, so sorting by the
    key interleaves the classes in proportion; taking the first k of the result is a stratified
    sample of size exactly k (round-robin in proportion), which a per-class rounding is not.
    """
    n = labels.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    perm = torch.randperm(n, generator=gen)
    lab = labels[perm]
    grouped = perm[torch.sort(lab, stable=True).indices]
    glab = labels[grouped]
    counts = torch.bincount(glab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[glab]
    offset = torch.rand(counts.shape[0], generator=gen, dtype=torch.float64)
    key = (rank.double() + offset[glab]) / counts[glab].double()
    return grouped[torch.sort(key, stable=True).indices]


def take(labels: Tensor, fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Split indices into (taken, rest) with ``round(fraction * n)`` taken, at least one each."""
    n = labels.shape[0]
    k = min(max(1, round(fraction * n)), n - 1)
    order = stratified_order(labels, gen)
    return order[:k].sort().values, order[k:].sort().values


def make_splits(
    parts: dict[str, ImageSplit],
    *,
    num_classes: int,
    class_names: list[str],
    source: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_train: int | None,
) -> Splits:
    """Turn a loader's official parts ('train' and optionally 'val', 'test') into Splits."""
    train = parts["train"]
    test = parts.get("test")
    val = parts.get("val")
    if test is None:
        if len(train) < 3:
            raise DataError(f"{source} has only {len(train)} images; need at least 3 to split")
        gen = torch.Generator().manual_seed(mix(seed, STREAM_TEST))
        test_idx, rest_idx = take(train.labels, test_fraction, gen)
        test, train = train.subset(test_idx), train.subset(rest_idx)
    if val is None:
        if len(train) < 2:
            raise DataError(
                f"{source} leaves only {len(train)} training images; need at least 2 to split off "
                "validation (lower data.test_fraction or add images)"
            )
        gen = torch.Generator().manual_seed(mix(seed, STREAM_VAL))
        val_idx, train_idx = take(train.labels, val_fraction, gen)
        val, train = train.subset(val_idx), train.subset(train_idx)
    if max_train is not None and max_train < len(train):
        gen = torch.Generator().manual_seed(mix(seed, STREAM_CAP))
        keep = stratified_order(train.labels, gen)[:max_train].sort().values
        train = train.subset(keep)
    if num_classes < 2:
        raise DataError(f"{source} has only {num_classes} class; a classifier needs at least 2")
    for name, part in (("train", train), ("val", val), ("test", test)):
        if len(part) == 0:
            raise DataError(f"{source}: the {name} split is empty; add images or change the fractions")
        hi = int(part.labels.max())
        lo = int(part.labels.min())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{source}: {name} labels must lie in [0, {num_classes}), found {lo}..{hi} "
                "(unlabelled rows use -1: remove them or pick a labelled split)"
            )
    return Splits(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        class_names=list(class_names),
        source=source,
    )
