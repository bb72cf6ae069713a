"""Which rows a streamed epoch reads, in which order and in which windows: a function of the seed.

A *window* is the rows one Ray Data task decodes and hands on in order. Its size trades the time to
the first batch (one window must be decoded before anything arrives) and the mixing of Parquet rows
(below) against task overhead: about 16 MiB decoded, at most 1024 rows (1024 rows at 64 px, 111 at
224 px).

* **Validation and test** read their rows in the in-memory order (ascending), a DDP rank a
  contiguous slice of it: every image once, in a fixed order.
* **Training, image folders** (each image its own file, so any order costs the same): the epoch's
  order is exactly :func:`~lorsp.data.batches.epoch_order`, the permutation the in-memory
  :class:`~lorsp.data.BatchIterator` uses, so a streamed run sees the same batches.
* **Training, Parquet** (rows come a row group at a time): the row groups, cut into pieces of at
  most one window, are permuted from (seed, epoch), consecutive pieces fill a window, and the rows
  of each window are permuted again. Each row group is read once per epoch; a batch mixes the row
  groups of one window, so shards written in class order should be shuffled once when written
  (Hugging Face's are).
"""

from __future__ import annotations

import numpy as np
import torch

from lorsp.data.batches import epoch_order
from lorsp.data.manifest import Manifest
from lorsp.data.seeding import STREAM_ORDER, mix

__all__ = ["WINDOW_BYTES", "WINDOW_MAX_ROWS", "eval_windows", "train_windows", "window_rows"]

WINDOW_BYTES = 16 * 2**20
WINDOW_MAX_ROWS = 1024
_WINDOW_MIN_ROWS = 16


def window_rows(manifest: Manifest, size: int | None = None) -> int:
    """Rows per window for this data set's decoded image size (``size`` when given)."""
    if size is not None:
        return int(size)
    return int(min(WINDOW_MAX_ROWS, max(_WINDOW_MIN_ROWS, WINDOW_BYTES // manifest.bytes_per_image)))


def _cut(positions: np.ndarray, size: int) -> list[np.ndarray]:
    return [positions[i : i + size] for i in range(0, len(positions), size)]


def eval_windows(rows: np.ndarray, manifest: Manifest, *, rank: int = 0, world_size: int = 1,
                 size: int | None = None) -> list[np.ndarray]:
    """A validation or test split's windows for one rank: a contiguous slice, in order, no padding.

    Windows hold positions in the split (``rows[position]`` is the manifest row), here and below.
    """
    n = len(rows)
    mine = np.arange(rank * n // world_size, (rank + 1) * n // world_size, dtype=np.int64)
    return _cut(mine, window_rows(manifest, size))


def train_windows(rows: np.ndarray, manifest: Manifest, *, seed: int, epoch: int,
                  size: int | None = None) -> list[np.ndarray]:
    """The training split's windows for ``epoch``, in reading order (see the module docstring)."""
    size = window_rows(manifest, size)
    if manifest.kind != "parquet":
        return _cut(epoch_order(len(rows), seed=seed, epoch=epoch, shuffle=True).numpy(), size)
    gen = torch.Generator().manual_seed(mix(seed, STREAM_ORDER, epoch))
    chunk = manifest.chunk_of(rows)  # rows ascending, so each chunk's rows are contiguous here
    starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    pieces = [np.arange(i, min(i + size, b), dtype=np.int64) for a, b in zip(starts, ends) for i in range(a, b, size)]
    windows: list[np.ndarray] = []
    current: list[np.ndarray] = []
    filled = 0
    for p in torch.randperm(len(pieces), generator=gen).tolist():
        current.append(pieces[p])
        filled += len(pieces[p])
        if filled >= size:
            windows.append(np.concatenate(current))
            current, filled = [], 0
    if current:
        windows.append(np.concatenate(current))
    return [w[torch.randperm(len(w), generator=gen).numpy()] for w in windows]
