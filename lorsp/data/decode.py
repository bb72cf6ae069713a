"""Decoding images once at load time: PIL to uint8, many files at once on a thread pool.

Sets of variable-size files (image folders, Parquet, Flowers, DTD, ...) are decoded exactly once,
resized to the model's input size, into one preallocated uint8 tensor; after that no trial ever
touches PIL again. A file PIL cannot read is one :class:`~lorsp.errors.DataError` line that says
which file (or Parquet row) it is and what it starts with.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from lorsp.errors import DataError

__all__ = ["decode_many", "decode_pil", "decode_reason", "decode_source"]


def decode_pil(img: Any, size: int) -> np.ndarray:
    """PIL image -> uint8 [size, size, 3]; JPEG ``draft`` lets libjpeg decode at reduced scale."""
    from PIL import Image

    if getattr(img, "format", None) == "JPEG":
        img.draft("RGB", (size, size))  # only ever reduces by powers of 2 down to >= size
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)  # PIL's bilinear antialiases
    return np.asarray(img, dtype=np.uint8)


def decode_source(src: str | bytes | Path, size: int, what: str, fix: str) -> np.ndarray:
    """Decode one image; a failure is one DataError line `WHAT: cannot decode the image (why); FIX`.

    `what` says where the image lives (its file, or a Parquet file and row), because PIL's own
    message names only the object it was handed, e.g. `<_io.BytesIO object at 0x7f..>` for bytes.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
        with Image.open(fp) as img:
            return decode_pil(img, size)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{what}: cannot decode the image ({decode_reason(e, src)}); {fix}") from e


def decode_reason(err: BaseException, src: Any) -> str:
    """PIL's reason without the object or path it repeats, plus the first bytes of data it cannot identify
    (an HTML error page or a text file saved as .png shows itself there)."""
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        head = bytes(src[:8]) if isinstance(src, (bytes, bytearray, memoryview)) else _head(src)
        return f"not a format PIL can read; it starts with {head!r}" if head else "not a format PIL can read: no bytes"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", text).strip() or type(err).__name__


def _head(path: Any, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _decode_workers() -> int:
    # PIL releases the GIL while decoding and resizing; extra threads also hide file-system latency.
    return max(1, min(16, 2 * (os.cpu_count() or 1)))


def decode_many(
    items: Sequence[Any], size: int, decode: Callable[[Any], np.ndarray], out: Tensor, start: int = 0
) -> None:
    """Decode ``items`` into ``out[start:start+len(items)]`` (uint8 [N,3,S,S]) with a thread pool."""

    def one(i: int) -> None:
        arr = decode(items[i])
        out[start + i].permute(1, 2, 0).numpy()[...] = arr  # numpy copy: PIL arrays are read-only

    if len(items) <= 8:
        for i in range(len(items)):
            one(i)
        return
    pool = ThreadPoolExecutor(_decode_workers())
    try:
        for _ in pool.map(one, range(len(items))):  # re-raises the first DataError in order
            pass
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # report a bad file now, not after the rest
        raise
    pool.shutdown(wait=True)
