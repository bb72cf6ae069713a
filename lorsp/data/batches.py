"""On-device batching: a split moves to the device once, then every batch is built there.

Decoding and PIL transforms per sample per epoch (a ``DataLoader`` with workers) would cost more
than the prompt's forward pass on a GPU and multiply across concurrent trials; here a batch is an
index gather, a float conversion, a resize and an optional augmentation, all on the device and free
of host-device synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from lorsp.data.containers import ImageSplit, check_image_size
from lorsp.data.seeding import STREAM_AUG, STREAM_ORDER, mix
from lorsp.errors import DataError

__all__ = ["AUGMENT_MODES", "BatchIterator", "augment_generator", "epoch_order", "random_crop_flip", "to_float"]

#: Training-batch augmentations ``BatchIterator(augment=...)`` knows (``data.augment``); see
#: :class:`BatchIterator` for when each is safe.
AUGMENT_MODES: tuple[str, ...] = ("none", "crop", "flip", "crop_flip")


class BatchIterator:
    """Yields (x float32 [B,3,image_size,image_size] in [0,1] on `device`, y int64 on `device`).

    The whole split is moved to ``device`` once (uint8), so a batch is an index gather followed
    by float conversion, resize and augmentation, all on the device and free of host syncs: the
    epoch's index order is computed on the CPU once per epoch and copied over in one transfer,
    and augmentation draws its randomness from a generator that lives on the device.

    Sharding follows ``DistributedSampler``: every rank computes the same permutation from
    (seed, epoch), pads it by wrapping to a multiple of ``world_size`` and takes every
    ``world_size``-th index from ``rank``; so ranks get disjoint shards (up to the padding) of
    equal length and DDP ranks run the same number of steps. The padding repeats a few samples,
    so for exact evaluation metrics iterate with ``world_size=1``. ``drop_last`` drops this
    rank's final incomplete batch (the ``DataLoader`` meaning).

    ``augment`` is for training batches only; evaluation iterators keep the default ``"none"``:

    * ``"none"``: the images as stored (LoR-VP's recipe); always safe.
    * ``"crop"``: a random shift by up to 1/8 of the side, zero-filled (CIFAR's 4 px of 32); safe
      when a small translation keeps the class and nothing that decides it sits at the border.
    * ``"flip"``: a horizontal mirror of half the batch; safe only when a mirror image is the same
      class (natural photos). Never for digits, text, directional signs or orientation-labelled
      images (the generated gratings): the mirror of a 2, a 'b' or a 30-degree grating is another
      glyph or orientation, so flipping teaches the model wrong labels.
    * ``"crop_flip"``: both in one gather, under the same proviso as ``"flip"``.

    ``seed`` drives the epoch order and the augmentation draws; the training loop passes
    ``train.seed``, so a new training seed reorders the data while the splits (``data.seed``) stay.
    """

    def __init__(
        self,
        split: ImageSplit,
        *,
        batch_size: int,
        image_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: str = "none",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"data.batch_size must be a positive integer, got {batch_size}")
        check_image_size(image_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if len(split) == 0:
            raise DataError("cannot iterate over an empty split")
        if isinstance(augment, bool) or augment not in AUGMENT_MODES:
            raise ValueError(
                f"augment must be one of {', '.join(AUGMENT_MODES)}, got {augment!r} "
                "(never flip digits, text or orientation-labelled images)"
            )
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.image_size = int(image_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = drop_last
        self.epoch = 0
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.num_total = len(split)
        self.num_samples = math.ceil(self.num_total / self.world_size)  # per rank, after padding

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def shard_indices(self) -> Tensor:
        """This rank's sample indices for the current epoch (CPU int64), in iteration order."""
        return epoch_order(self.num_total, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                           rank=self.rank, world_size=self.world_size)

    def _generator(self) -> tuple[torch.Generator, torch.device]:
        return augment_generator(self.seed, self.epoch, self.rank, self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        index = self.shard_indices().to(self.device, non_blocking=True)
        crop, flip = self.augment in ("crop", "crop_flip"), self.augment in ("flip", "crop_flip")
        gen = self._generator() if crop or flip else None
        for b in range(len(self)):
            idx = index[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            y = self.labels.index_select(0, idx)
            if gen is not None:
                x = random_crop_flip(x, *gen, self.device, crop=crop, flip=flip)
            yield self._to_float(x), y

    def _to_float(self, x: Tensor) -> Tensor:
        return to_float(x, self.image_size)


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> Tensor:
    """One rank's sample indices (CPU int64) of an epoch over ``n`` samples, in iteration order.

    The ``DistributedSampler`` rule: one permutation from (seed, epoch), padded by wrapping to a
    multiple of ``world_size``, every ``world_size``-th index from ``rank``. A streamed random-access
    split reads its rows in this same order, so it trains on the same batches as in memory.
    """
    if shuffle:
        g = torch.Generator().manual_seed(mix(seed, STREAM_ORDER, epoch))
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    total = math.ceil(n / world_size) * world_size
    if total > n:
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank:total:world_size]


def augment_generator(seed: int, epoch: int, rank: int, device: torch.device) -> tuple[torch.Generator, torch.device]:
    """The epoch's augmentation generator, on the device when the backend has one (no transfer per draw)."""
    s = mix(seed, STREAM_AUG, epoch, rank)
    try:
        return torch.Generator(device=device).manual_seed(s), device
    except RuntimeError:
        return torch.Generator().manual_seed(s), torch.device("cpu")


def to_float(x: Tensor, image_size: int) -> Tensor:
    """uint8 [B,3,H,W] -> float32 [B,3,S,S] in [0, 1]: convert, then resize (antialiased when shrinking)."""
    x = x.float().div_(255.0)
    h, w = x.shape[-2:]
    s = image_size
    if (h, w) != (s, s):
        x = F.interpolate(
            x, size=(s, s), mode="bilinear", align_corners=False, antialias=(h > s or w > s)
        )
        x = x.clamp_(0.0, 1.0)  # bilinear with antialias can overshoot by rounding
    return x


def random_crop_flip(
    x: Tensor,
    gen: torch.Generator,
    gen_device: torch.device,
    device: torch.device,
    *,
    crop: bool = True,
    flip: bool = True,
) -> Tensor:
    """Batched random crop with zero padding (1/8 of the side, as CIFAR's 4 of 32) and/or h-flip.

    Done at the stored resolution, before resizing, where it is cheapest. Each part only builds
    per-sample row and column indices (the crop offsets them, the flip reverses the columns), so
    any combination is one advanced-indexing gather on uint8: no Python loop over samples, and the
    random draws stay on ``gen_device`` (no host sync). With both on, the draws come in the order
    (row offsets, column offsets, flips), so ``crop_flip`` batches are the same as before the
    two were separable.
    """
    n, c, h, w = x.shape
    rows = torch.arange(h, device=device)[None, :].expand(n, h)  # [n, h]
    cols = torch.arange(w, device=device)[None, :].expand(n, w)  # [n, w]
    if crop:
        ph, pw = max(1, round(h / 8)), max(1, round(w / 8))
        x = F.pad(x, (pw, pw, ph, ph))
        oy = torch.randint(0, 2 * ph + 1, (n,), generator=gen, device=gen_device).to(device, non_blocking=True)
        ox = torch.randint(0, 2 * pw + 1, (n,), generator=gen, device=gen_device).to(device, non_blocking=True)
        rows = rows + oy[:, None]
        cols = cols + ox[:, None]
    if flip:
        mirror = (torch.rand(n, generator=gen, device=gen_device) < 0.5).to(device, non_blocking=True)
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    bi = torch.arange(n, device=device)[:, None, None, None]
    ci = torch.arange(c, device=device)[None, :, None, None]
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
