"""A data set as rows not yet decoded: each row's file, its place in that file and its label.

Streaming decodes images in Ray Data tasks while a trial trains, so nobody ever holds the decoded
set. What must be known up front is small and cheap to get: which files there are, how many rows
each holds, and every label (a Parquet label column, an image folder's class subfolders). From the
labels alone :func:`~lorsp.data.splits.split_index` assigns train / validation / test exactly as the
in-memory loader does, and :class:`StreamPlan` keeps each split's rows in the in-memory order, so a
streamed split is the same images in the same order as :class:`~lorsp.data.Splits` would hold.

:func:`lorsp.data.load.read_rows` decodes any set of rows (a window of one epoch); it is what a Ray
Data task runs, and needs no Ray itself. The manifest of ImageNet-1K is about 20 bytes a row (26 MB), against
150 KB a row decoded at 224 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["Manifest", "StreamPlan"]

Kind = Literal["parquet", "imagefolder"]


@dataclass
class Manifest:
    """Every row of a streamable data set, in the order the in-memory loader decodes them.

    ``file_index[i]`` is row i's file in ``files``, ``row_in_file[i]`` its row there (Parquet; 0 for
    image files), ``labels[i]`` its class id. ``parts`` maps an official part ('train', and 'val' /
    'test' where the data set has them) to its rows, ascending. Parquet files also record where each
    row group starts (``row_groups``), the unit a reader fetches, and whether the image column holds
    plain bytes or Hugging Face's ``{bytes, path}`` struct (``image_kinds``).
    """

    kind: Kind
    files: list[str]
    file_index: np.ndarray  # int32 [n]
    row_in_file: np.ndarray  # int64 [n]
    labels: np.ndarray  # int64 [n]
    parts: dict[str, np.ndarray]
    num_classes: int
    class_names: list[str]
    source: str
    image_size: int
    image_column: str = "image"
    image_kinds: list[str] = field(default_factory=list)  # parquet, per file: "binary" | "struct"
    row_groups: list[np.ndarray] = field(default_factory=list)  # parquet, per file: first row of each group

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def bytes_per_image(self) -> int:
        """Decoded uint8 bytes of one image: every streamable source stores images at ``image_size``."""
        return 3 * self.image_size * self.image_size

    def chunk_of(self, rows: np.ndarray) -> np.ndarray:
        """For each row, the id of the unit its reader fetches at once: a Parquet row group or a file.

        Ids increase with the manifest order, so rows sorted by row id are grouped by chunk.
        """
        if self.kind != "parquet":
            return rows.astype(np.int64)
        offsets = np.cumsum([0] + [len(g) for g in self.row_groups])
        files = self.file_index[rows]
        out = np.empty(len(rows), dtype=np.int64)
        for f in np.unique(files):
            sel = files == f
            group = np.searchsorted(self.row_groups[f], self.row_in_file[rows[sel]], side="right") - 1
            out[sel] = offsets[f] + group
        return out


@dataclass
class StreamPlan:
    """A streamed data set's fixed splits: row ids into ``manifest`` (the analogue of ``Splits``).

    Only indices and names, so a driver ``ray.put``s it once and every trial builds its own Ray Data
    pipelines from it.
    """

    manifest: Manifest
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    window: int | None = None  # rows a decode task reads at once; None: from the image size (lorsp.data.order)

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    @property
    def source(self) -> str:
        return self.manifest.source

    def decoded_bytes(self) -> int:
        """What the three splits would take decoded in memory (uint8)."""
        return (len(self.train) + len(self.val) + len(self.test)) * self.manifest.bytes_per_image

    def summary(self) -> str:
        s = self.manifest.image_size
        return (f"{self.source}: train {len(self.train)}, val {len(self.val)}, test {len(self.test)}, "
                f"{self.num_classes} classes, streamed at {s}x{s}")
