"""What every source takes and returns, so the registry can call any of them the same way."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lorsp.data.containers import ImageSplit
from lorsp.data.manifest import Manifest
from lorsp.errors import DataError

__all__ = ["DatasetSpec", "Indexer", "LoadOptions", "Loaded", "Loader", "RowReader", "resolve_path"]


class DatasetSpec(NamedTuple):
    """A parsed ``data.dataset`` string: ``kind`` (lower case, '_' for '-') and its argument.

    ``arg`` is the path of ``imagefolder:``/``parquet:``, the image count of ``synthetic:N``, or
    None for a named data set.
    """

    kind: str
    arg: str | None = None


@dataclass(frozen=True)
class LoadOptions:
    """The study settings a source may need; each source reads only its own.

    ``image_size`` is the size variable-size files are decoded to once; ``seed`` drives generated
    data; ``root`` is where downloaded sets live; the columns name a Parquet file's image and label.
    """

    image_size: int
    seed: int = 0
    root: str | None = None
    image_column: str = "image"
    label_column: str = "label"


class Loaded(NamedTuple):
    """A loaded data set before splitting.

    ``parts`` holds 'train' and, where the data set has them, its official 'val' and 'test'
    splits; ``source`` is the one line that :meth:`lorsp.data.Splits.summary` starts with.
    """

    parts: dict[str, ImageSplit]
    num_classes: int
    class_names: list[str]
    source: str


#: What every source's ``load`` is: the parsed spec and the options in, the unsplit data set out.
Loader = Callable[[DatasetSpec, LoadOptions], Loaded]

#: What a streamable source's ``index`` is: the same arguments, every row listed but none decoded.
Indexer = Callable[[DatasetSpec, LoadOptions], Manifest]

#: What a streamable source's ``read`` is: decode manifest rows into ``out[i]`` (uint8 [S, S, 3]).
RowReader = Callable[[Manifest, np.ndarray, np.ndarray], None]


def resolve_path(kind: str, arg: str) -> Path:
    """The absolute path a ``kind:PATH`` spec names; a missing path is one line naming the spec."""
    path = Path(os.path.expanduser(arg)).resolve()
    if not path.exists():
        raise DataError(f"{kind} path {path} does not exist; check data.dataset ('{kind}:PATH')")
    return path
