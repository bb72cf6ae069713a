"""``imagefolder:PATH``: a torchvision-style tree of class subfolders, decoded once.

``PATH/<class>/<image>`` is one pool that the seed splits; ``PATH/train/`` with ``PATH/test/``
(and/or ``val/``) gives official splits. Images vary in size, so they are resized to
``image_size`` once at load time (PIL bilinear, antialiased; aspect ratio is not kept, like
``Resize((S, S))``). :func:`index_imagefolder` lists the same files for streaming without decoding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lorsp.data.containers import ImageSplit
from lorsp.data.decode import decode_many, decode_source
from lorsp.data.manifest import Manifest
from lorsp.data.sources.base import DatasetSpec, Loaded, LoadOptions, resolve_path
from lorsp.errors import DataError

__all__ = ["IMG_EXTENSIONS", "index_imagefolder", "load_imagefolder", "read_imagefolder_rows"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class FolderScan(NamedTuple):
    """The image files of one class-per-subfolder tree, their labels and the class names."""

    files: list[Path]
    labels: list[int]
    classes: list[str]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    files = [
        Path(dirpath) / f
        for dirpath, _, names in os.walk(folder, followlinks=True)
        for f in names
        if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")
    ]
    return sorted(files)


def _scan_folder(folder: Path, classes: list[str] | None) -> FolderScan:
    """List the files of one class-per-subfolder tree; ``classes`` fixes the label order."""
    dirs = {d.name: d for d in _class_dirs(folder)}
    found = {name: _image_files(d) for name, d in dirs.items()}
    found = {name: files for name, files in found.items() if files}
    if classes is None:
        classes = sorted(found)
        if not classes:
            raise DataError(
                f"imagefolder {folder} has no class subfolders with images; expected "
                f"{folder}/<class>/<image>.png ({'/'.join(IMG_EXTENSIONS)})"
            )
        if len(classes) < 2:
            raise DataError(
                f"imagefolder {folder} has only one class ('{classes[0]}'); a classifier needs at "
                "least 2 class subfolders"
            )
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"imagefolder {folder} has classes not in the training folder: {', '.join(unknown)}; "
                "make the class subfolders match"
            )
        if not found:
            raise DataError(f"imagefolder {folder} has no images in class subfolders")
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for name in classes:
        for f in found.get(name, []):
            files.append(f)
            labels.append(index[name])
    return FolderScan(files, labels, classes)


def _decode_files(files: list[Path], labels: list[int], size: int) -> ImageSplit:
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    decode_many(files, size, lambda f: decode_source(f, size, str(f), "fix or delete that file"), out)
    return ImageSplit(out, torch.as_tensor(labels, dtype=torch.int64))


def _official_dirs(root: Path) -> dict[str, Path]:
    """The official split folders below ``root`` ({} when the whole tree is one pool)."""
    sub = {d.name.lower(): d for d in _class_dirs(root)}
    official: dict[str, Path] = {}
    if "train" in sub and ("test" in sub or "val" in sub or "valid" in sub or "validation" in sub):
        val_dir = sub.get("val") or sub.get("valid") or sub.get("validation")
        official["train"] = sub["train"]
        if "test" in sub:
            official["test"] = sub["test"]
            if val_dir is not None:
                official["val"] = val_dir
        else:
            official["test"] = val_dir  # train/ + val/ only: val/ is the held-out split
    return official


def _parts(root: Path) -> tuple[dict[str, FolderScan], list[str], str]:
    """The tree's official parts (or one 'train' pool) as file lists, its classes and its layout."""
    official = _official_dirs(root)
    if not official:
        scan = _scan_folder(root, None)
        return {"train": scan}, scan.classes, "one pool"
    train = _scan_folder(official["train"], None)
    parts = {"train": train}
    for name in ("val", "test"):
        if name in official:
            parts[name] = _scan_folder(official[name], train.classes)
    return parts, train.classes, "+".join(p.name for p in official.values())


def _root(spec: DatasetSpec) -> Path:
    assert spec.arg is not None  # the spec grammar requires a path
    root = resolve_path("imagefolder", spec.arg)
    if not root.is_dir():
        raise DataError(f"imagefolder path {root} is not a directory; use parquet: for a file")
    return root


def _source_line(root: Path, total: int, classes: list[str], layout: str, image_size: int) -> str:
    return (
        f"imagefolder {root} ({total} images, {len(classes)} classes, {layout}, "
        f"resized to {image_size}x{image_size})"
    )


def load_imagefolder(spec: DatasetSpec, options: LoadOptions) -> Loaded:
    """Decode the tree at ``spec.arg`` into its official parts (or one 'train' pool)."""
    root = _root(spec)
    scans, classes, layout = _parts(root)
    parts = {name: _decode_files(scan.files, scan.labels, options.image_size) for name, scan in scans.items()}
    total = sum(len(p) for p in parts.values())
    return Loaded(parts, len(classes), classes, _source_line(root, total, classes, layout, options.image_size))


def index_imagefolder(spec: DatasetSpec, options: LoadOptions) -> Manifest:
    """The tree's files and labels without decoding any image, in :func:`load_imagefolder`'s order."""
    root = _root(spec)
    scans, classes, layout = _parts(root)
    files = [str(f) for scan in scans.values() for f in scan.files]
    labels = np.array([lab for scan in scans.values() for lab in scan.labels], dtype=np.int64)
    parts, start = {}, 0
    for name, scan in scans.items():
        parts[name] = np.arange(start, start + len(scan.files), dtype=np.int64)
        start += len(scan.files)
    return Manifest(
        kind="imagefolder", files=files, file_index=np.arange(len(files), dtype=np.int32),
        row_in_file=np.zeros(len(files), dtype=np.int64), labels=labels, parts=parts,
        num_classes=len(classes), class_names=classes, image_size=options.image_size,
        source=_source_line(root, len(files), classes, layout, options.image_size),
    )


def read_imagefolder_rows(manifest: Manifest, rows: np.ndarray, out: np.ndarray) -> None:
    """Decode manifest ``rows`` into ``out[i]`` (uint8 [S, S, 3]), one file each."""
    for i, row in enumerate(rows):
        path = manifest.files[manifest.file_index[row]]
        out[i] = decode_source(path, manifest.image_size, path, "fix or delete that file")
