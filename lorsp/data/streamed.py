"""A streamed split as the training loop sees it: uint8 batches in, device batches out.

Whatever delivers a streamed split (Ray Data in :mod:`lorsp.data.stream`: a dataset the trial
iterates itself, or a Ray Train worker's ``get_dataset_shard``) reaches the training loop as a
:class:`UInt8Stream`, one epoch of uint8 batches at a time, so the loop and this module know
nothing of Ray. :class:`StreamBatches` then does on the device exactly what
:class:`~lorsp.data.BatchIterator` does after its gather: float conversion, resize and the same
seeded augmentation draws, so both paths feed the model the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from lorsp.data.batches import AUGMENT_MODES, augment_generator, random_crop_flip, to_float
from lorsp.data.containers import ImageSplit, check_image_size
from lorsp.errors import DataError

__all__ = ["StreamBatches", "StreamedSplits", "UInt8Batch", "UInt8Stream"]

UInt8Batch = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(images uint8 [B, 3, H, W], labels int64 [B], keys int64 [B]); a key is the row's position in its split."""


class UInt8Stream(Protocol):
    """One split as this process reads it: ``num_rows`` rows an epoch, delivered in uint8 batches."""

    num_rows: int

    def batches(self, epoch: int, batch_size: int, drop_last: bool) -> Iterator[UInt8Batch]:
        """The epoch's batches of ``batch_size`` (the last one shorter unless ``drop_last``)."""
        ...


@dataclass
class StreamedSplits:
    """The streamed counterpart of :class:`~lorsp.data.Splits`: three streams and the class names.

    ``sizes`` are the whole splits' sizes; a stream holds only what this process (rank) reads.
    """

    train: UInt8Stream
    val: UInt8Stream
    test: UInt8Stream
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    gallery: ImageSplit | None = None
    """A few validation images decoded up front (the ones :mod:`lorsp.gallery` shows: the first of
    each class), so a streamed trial draws the same pictures as one in memory."""


class StreamBatches:
    """Yields (x float32 [B,3,S,S] in [0,1] on ``device``, y int64) from a :class:`UInt8Stream`.

    Same contract as :class:`~lorsp.data.BatchIterator` (``set_epoch``, ``len``, ``shard_indices``,
    ``augment``): the training loop uses either. ``len`` is fixed from the stream's row count, and an
    epoch yields exactly that many batches: DDP ranks must step together, so a stream that runs
    short is an error rather than a silent hang, and surplus batches are not taken.
    """

    def __init__(
        self,
        stream: UInt8Stream,
        *,
        batch_size: int,
        image_size: int,
        device: torch.device | str = "cpu",
        augment: str = "none",
        seed: int = 0,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"data.batch_size must be a positive integer, got {batch_size}")
        check_image_size(image_size)
        if stream.num_rows == 0:
            raise DataError("cannot iterate over an empty split")
        if isinstance(augment, bool) or augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)}, got {augment!r}")
        self.stream = stream
        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.augment = augment
        self.seed = int(seed)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.epoch = 0
        self._keys: list[np.ndarray] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.stream.num_rows
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def shard_indices(self) -> Tensor:
        """Positions in the split of the rows the last epoch read on this rank, in reading order."""
        return torch.from_numpy(np.concatenate(self._keys)) if self._keys else torch.empty(0, dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        crop, flip = self.augment in ("crop", "crop_flip"), self.augment in ("flip", "crop_flip")
        gen = augment_generator(self.seed, self.epoch, self.rank, self.device) if crop or flip else None
        expected = len(self)
        self._keys = []
        done = 0
        batches = self.stream.batches(self.epoch, self.batch_size, self.drop_last)
        try:
            for images, labels, keys in batches:
                if done == expected:
                    break
                x = _to_device(images, self.device)
                y = _to_device(np.asarray(labels, dtype=np.int64), self.device)
                if gen is not None:
                    x = random_crop_flip(x, *gen, self.device, crop=crop, flip=flip)
                self._keys.append(np.asarray(keys, dtype=np.int64))
                done += 1
                yield to_float(x, self.image_size), y
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stop the pipeline's prefetching when the loop leaves early
        if done < expected:
            raise DataError(
                f"the streamed split delivered {done} batches of {self.batch_size} where {expected} were "
                "expected: the data set changed while it was read, or rows were lost; restart the trial"
            )


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """A batch array as a tensor on ``device``. Arrays read zero-copy from Ray's object store are
    read-only, and torch has no read-only tensors: those are copied first."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device, non_blocking=True)
