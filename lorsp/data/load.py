"""The one way in: a spec and the study's settings to fixed :class:`~lorsp.data.Splits`.

Every caller builds its splits from a study's ``data`` section with :func:`load_splits_for`;
:func:`load_splits` is the same with the settings spelled out, for code without a study.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorsp.data.containers import Splits, check_image_size
from lorsp.data.registry import source_for
from lorsp.data.sources.base import LoadOptions
from lorsp.data.spec import parse_spec
from lorsp.data.splits import make_splits
from lorsp.errors import DataError

if TYPE_CHECKING:
    from lorsp.config import DataConfig

__all__ = ["load_splits", "load_splits_for"]


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


def load_splits_for(data: DataConfig) -> Splits:
    """The splits a study's `data` section (a :class:`lorsp.config.DataConfig`) describes."""
    return load_splits(
        data.dataset,
        image_size=data.image_size,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
        max_train=data.max_train,
        root=data.root,
        image_column=data.image_column,
        label_column=data.label_column,
    )
