"""The one way in: a spec and the study's settings to fixed :class:`~lorsp.data.Splits`.

Every caller builds its splits from a study's ``data`` section with :func:`load_splits_for`;
:func:`load_splits` is the same with the settings spelled out, for code without a study.
:func:`plan_stream_for` / :func:`plan_stream` are their streamed counterparts: the same splits as
row indices of a :class:`~lorsp.data.manifest.StreamPlan`, nothing decoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lorsp.data.containers import Splits, check_image_size
from lorsp.data.manifest import Manifest, StreamPlan
from lorsp.data.registry import Source, source_for
from lorsp.data.sources.base import DatasetSpec, LoadOptions
from lorsp.data.spec import parse_spec
from lorsp.data.splits import make_splits, split_index
from lorsp.errors import DataError

if TYPE_CHECKING:
    from lorsp.config import DataConfig

__all__ = ["load_splits", "load_splits_for", "plan_stream", "plan_stream_for", "read_rows", "streamable"]


def _checked(spec: str, image_size: int, val_fraction: float, test_fraction: float,
             max_train: int | None) -> tuple[DatasetSpec, Source]:
    """The parsed spec and its source, after refusing settings no split can be made with."""
    parsed = parse_spec(spec)
    check_image_size(image_size)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    if max_train is not None and max_train < 1:
        raise DataError(f"data.max_train must be a positive integer or null, got {max_train}")
    source = source_for(parsed.kind)
    assert source is not None  # parse_spec accepts only kinds the registry knows
    return parsed, source


def streamable(spec: str) -> bool:
    """Whether the data set ``spec`` names can be streamed (its source lists rows without decoding)."""
    source = source_for(parse_spec(spec).kind)
    return source is not None and source.index is not None and source.read is not None


def load_splits(
    spec: str,
    *,
    image_size: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_train: int | None = None,
    root: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
) -> Splits:
    """Load a data set once and split it deterministically from ``seed``.

    ``image_size`` is the backbone's input size. Data sets with one native resolution (digits,
    synthetic, CIFAR, MNIST, SVHN, STL10) are kept at that resolution and resized per batch on
    the device by :class:`~lorsp.data.BatchIterator`; sets of variable-size files (imagefolder,
    parquet, Flowers, DTD, ...) must be made uniform once, so they are stored at ``image_size``.
    ``val_fraction`` is used only without an official validation split, ``test_fraction`` only
    without an official test split. ``max_train`` caps the training split (stratified,
    deterministic) after validation has been taken, so the validation set stays comparable.
    """
    parsed, source = _checked(spec, image_size, val_fraction, test_fraction, max_train)
    options = LoadOptions(
        image_size=image_size, seed=seed, root=root, image_column=image_column, label_column=label_column
    )
    loaded = source.load(parsed, options)
    return make_splits(
        loaded.parts,
        num_classes=loaded.num_classes,
        class_names=loaded.class_names,
        source=loaded.source,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        max_train=max_train,
    )


def _settings(data: DataConfig) -> dict[str, Any]:
    """The keyword arguments a study's `data` section gives both ways of reading a data set."""
    return dict(image_size=data.image_size, val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                seed=data.seed, max_train=data.max_train, image_column=data.image_column,
                label_column=data.label_column)


def load_splits_for(data: DataConfig) -> Splits:
    """The splits a study's `data` section (a :class:`lorsp.config.DataConfig`) describes."""
    return load_splits(data.dataset, root=data.root, **_settings(data))


def plan_stream(
    spec: str,
    *,
    image_size: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_train: int | None = None,
    image_column: str = "image",
    label_column: str = "label",
) -> StreamPlan:
    """The splits :func:`load_splits` would make with the same arguments, as rows nobody has decoded.

    Only ``parquet:`` and ``imagefolder:`` sets can be streamed; the splits come from the labels by
    the very function the in-memory path uses, so they are the same rows in the same order.
    """
    parsed, source = _checked(spec, image_size, val_fraction, test_fraction, max_train)
    if source.index is None or source.read is None:
        raise DataError(
            f"data.dataset '{spec}' cannot be streamed: only parquet:PATH and imagefolder:PATH can; "
            "set data.stream: false (or auto) to decode it into memory"
        )
    manifest = source.index(parsed, LoadOptions(image_size=image_size, seed=seed, image_column=image_column,
                                                label_column=label_column))
    labels = torch.from_numpy(manifest.labels)
    part_labels = {name: labels[torch.from_numpy(rows)] for name, rows in manifest.parts.items()}
    index = split_index(part_labels, num_classes=manifest.num_classes, source=manifest.source,
                        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, max_train=max_train)
    train, val, test = (manifest.parts[part][idx.numpy()] for part, idx in index)
    return StreamPlan(manifest=manifest, train=train, val=val, test=test)


def plan_stream_for(data: DataConfig) -> StreamPlan:
    """The streamed splits a study's `data` section describes (see :func:`plan_stream`)."""
    return plan_stream(data.dataset, **_settings(data))


def read_rows(manifest: Manifest, rows: np.ndarray) -> np.ndarray:
    """Decode manifest ``rows`` (any order) to uint8 ``[len(rows), 3, S, S]``, in that order.

    What a Ray Data decode task runs: on its one CPU, no thread pool. Each source reads its own way
    (a Parquet row group once however its rows are ordered; an image file each).
    """
    source = source_for(manifest.kind)
    assert source is not None and source.read is not None  # only sources that index their rows have manifests
    size = manifest.image_size
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    source.read(manifest, np.asarray(rows, dtype=np.int64), out)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
