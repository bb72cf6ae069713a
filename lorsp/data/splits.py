"""Seeded, stratified train / validation / test splits: the evaluation protocol in code.

The splits are a pure function of the loaded parts and the seed. A data set's official test (and
validation) split is used as is; without one, ``test_fraction`` of the pool becomes the test split
first and validation is taken from the rest, so the test split never depends on ``val_fraction``
or ``max_train``. Every split is stratified by class.

:func:`split_index` is the protocol on labels alone (which rows of which part); :func:`make_splits`
applies it to decoded images, and a streamed data set applies it to rows it has not decoded yet.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lorsp.data.containers import ImageSplit, Splits
from lorsp.data.seeding import STREAM_CAP, STREAM_TEST, STREAM_VAL, mix
from lorsp.errors import DataError

__all__ = ["SplitIndex", "make_splits", "split_index", "stratified_order", "take"]


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


class SplitIndex(NamedTuple):
    """Where each split's rows come from: ``(part, index)`` per split, ``index`` ascending into that part.

    Computed from labels alone, so a streamed data set (whose images are never all decoded) gets
    exactly the rows the in-memory loader would, in the same order.
    """

    train: tuple[str, Tensor]
    val: tuple[str, Tensor]
    test: tuple[str, Tensor]


def split_index(
    part_labels: dict[str, Tensor],
    *,
    num_classes: int,
    source: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_train: int | None,
) -> SplitIndex:
    """The protocol as indices: which rows of a loader's official parts form train / val / test.

    ``part_labels`` holds 'train' and optionally 'val' and 'test' (int64 labels of each part).
    """
    train_part = part_labels["train"]
    train_idx = torch.arange(train_part.shape[0])
    test = ("test", torch.arange(part_labels["test"].shape[0])) if "test" in part_labels else None
    val = ("val", torch.arange(part_labels["val"].shape[0])) if "val" in part_labels else None
    if test is None:
        if len(train_idx) < 3:
            raise DataError(f"{source} has only {len(train_idx)} images; need at least 3 to split")
        gen = torch.Generator().manual_seed(mix(seed, STREAM_TEST))
        test_rel, rest_rel = take(train_part[train_idx], test_fraction, gen)
        test, train_idx = ("train", train_idx[test_rel]), train_idx[rest_rel]
    if val is None:
        if len(train_idx) < 2:
            raise DataError(
                f"{source} leaves only {len(train_idx)} training images; need at least 2 to split off "
                "validation (lower data.test_fraction or add images)"
            )
        gen = torch.Generator().manual_seed(mix(seed, STREAM_VAL))
        val_rel, train_rel = take(train_part[train_idx], val_fraction, gen)
        val, train_idx = ("train", train_idx[val_rel]), train_idx[train_rel]
    if max_train is not None and max_train < len(train_idx):
        gen = torch.Generator().manual_seed(mix(seed, STREAM_CAP))
        train_idx = train_idx[stratified_order(train_part[train_idx], gen)[:max_train].sort().values]
    index = SplitIndex(train=("train", train_idx), val=val, test=test)
    _check_split_labels(index, part_labels, num_classes=num_classes, source=source)
    return index


def _check_split_labels(index: SplitIndex, part_labels: dict[str, Tensor], *, num_classes: int,
                        source: str) -> None:
    """Refuse an empty split or a label outside [0, num_classes) before any training starts."""
    if num_classes < 2:
        raise DataError(f"{source} has only {num_classes} class; a classifier needs at least 2")
    for name, (part, idx) in zip(SplitIndex._fields, index):
        if len(idx) == 0:
            raise DataError(f"{source}: the {name} split is empty; add images or change the fractions")
        labels = part_labels[part][idx]
        hi, lo = int(labels.max()), int(labels.min())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{source}: {name} labels must lie in [0, {num_classes}), found {lo}..{hi} "
                "(unlabelled rows use -1: remove them or pick a labelled split)"
            )


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
    index = split_index(
        {name: part.labels for name, part in parts.items()},
        num_classes=num_classes, source=source, val_fraction=val_fraction, test_fraction=test_fraction,
        seed=seed, max_train=max_train,
    )

    def rows(part: str, idx: Tensor) -> ImageSplit:
        whole = parts[part]
        return whole if len(idx) == len(whole) else whole.subset(idx)

    return Splits(
        train=rows(*index.train),
        val=rows(*index.val),
        test=rows(*index.test),
        num_classes=num_classes,
        class_names=list(class_names),
        source=source,
    )
