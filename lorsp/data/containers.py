"""The data a trial trains on, as plain tensors: :class:`ImageSplit` and :class:`Splits`.

Only tensors and builtins, so a :class:`Splits` pickles cheaply: a Ray driver puts it in the object
store once and every trial shares it, and ``torch.save`` stores it as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lorsp.errors import DataError

__all__ = ["ImageSplit", "Splits", "check_image_size"]


@dataclass
class ImageSplit:
    """One split as plain tensors: ``images`` uint8 ``[N, 3, H, W]``, ``labels`` int64 ``[N]``.

    uint8 rather than float keeps a split 4x smaller on the host, in the Ray object store and on
    the device; the conversion to float happens per batch on the device, where it is free.
    Grayscale data is stored replicated to 3 channels so every backbone sees RGB.
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        # Fail at construction, not deep inside a training step on a remote worker.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DataError(
                f"ImageSplit.images must be uint8 [N, 3, H, W], got {self.images.dtype} "
                f"{list(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(
                f"ImageSplit.labels must be int64 [N], got {self.labels.dtype} {list(self.labels.shape)}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"ImageSplit has {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        """Stored (H, W); the iterator resizes only when this differs from the model's size."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, index: Tensor) -> ImageSplit:
        """A new split holding the rows in ``index`` (a copy, so the parent can be freed)."""
        return ImageSplit(self.images[index].contiguous(), self.labels[index].contiguous())


@dataclass
class Splits:
    """Train / validation / test splits of one data set, fixed by the seed.

    Only plain tensors and builtins, so it pickles cheaply (Ray object store, torch.save).
    """

    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    source: str = ""

    def summary(self) -> str:
        """One line for logs: where the data came from and how it was split."""
        h, w = self.train.image_shape
        return (
            f"{self.source}: train {len(self.train)}, val {len(self.val)}, test {len(self.test)}, "
            f"{self.num_classes} classes, stored {h}x{w}"
        )


def check_image_size(image_size: int) -> None:
    """Refuse an ``image_size`` no split can be stored or resized at, before any work is done."""
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"data.image_size must be a positive integer, got {image_size!r}")
