"""Image classification data for prompt tuning: load once, keep uint8, batch on the device.

Why this shape: a hyperparameter search runs many short trials over the *same* small data set.
Decoding JPEGs and running PIL transforms per sample per epoch (a torch ``DataLoader`` with
workers) costs more than the prompt's forward pass on a GPU and multiplies across concurrent
trials. So every loader decodes its images exactly once into a ``uint8`` tensor (a few hundred
MB at most for the data sets this project targets), the :class:`Splits` object is plain tensors
(picklable, so a Ray driver can put it in the object store once and every trial shares it), and
:class:`BatchIterator` moves a split to the device once and then only gathers, converts, resizes
and augments batches there, without a host-device synchronisation per batch.

Spec strings (``data.dataset`` in the study file)::

    digits                  scikit-learn's bundled 8x8 handwritten digits (offline, 1797 images)
    synthetic[:N]           N generated class-dependent images (offline; default 2000, 10 classes)
    imagefolder:PATH        PATH/<class>/<image>; or PATH/train/... with PATH/test/ (and/or val/)
    parquet:PATH            Hugging Face style parquet file(s): encoded image bytes + integer label
    cifar10, cifar100, ...  torchvision data sets (see ``TORCHVISION_DATASETS``), official splits

Evaluation protocol (DESIGN.md section 1): the splits are a pure function of the spec and the
seed. Where a data set has an official test split it is used as is and the validation split is
``val_fraction`` of the training data; otherwise ``test_fraction`` of the pool becomes the test
split first and validation is taken from the rest. Splits are stratified by class. The test split
never depends on ``val_fraction`` or ``max_train``, so changing those cannot leak test images.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMENT_MODES",
    "BUILTIN_DATASETS",
    "TORCHVISION_DATASETS",
    "BatchIterator",
    "DataError",
    "ImageSplit",
    "Splits",
    "default_root",
    "load_splits",
    "validate_dataset_spec",
]


class DataError(ValueError):
    """A data problem the user can fix; ``str(e)`` is one line naming the problem and the fix.

    A ``ValueError`` so that config validation code that already catches ``ValueError`` reports
    it, and its own class so the CLI can print it without a traceback.
    """


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Spec strings
# --------------------------------------------------------------------------------------------

#: Data sets that need neither files nor network.
BUILTIN_DATASETS: tuple[str, ...] = ("digits", "synthetic")

# name -> (torchvision class, how images are exposed, {our split: constructor kwargs}, extra kwargs)
#   "hwc": ``.data`` numpy uint8 [N,H,W,3] + ``.targets``        (CIFAR)
#   "gray": ``.data`` tensor uint8 [N,H,W] + ``.targets``        (MNIST family)
#   "chw": ``.data`` numpy uint8 [N,3,H,W] + ``.labels``         (SVHN, STL10)
#   "files": one file per image; decoded once and resized to image_size (variable sizes)
_TV: dict[str, tuple[str, str, dict[str, dict[str, Any]], dict[str, Any]]] = {
    "cifar10": ("CIFAR10", "hwc", {"train": {"train": True}, "test": {"train": False}}, {}),
    "cifar100": ("CIFAR100", "hwc", {"train": {"train": True}, "test": {"train": False}}, {}),
    "mnist": ("MNIST", "gray", {"train": {"train": True}, "test": {"train": False}}, {}),
    "fashion_mnist": ("FashionMNIST", "gray", {"train": {"train": True}, "test": {"train": False}}, {}),
    "kmnist": ("KMNIST", "gray", {"train": {"train": True}, "test": {"train": False}}, {}),
    "svhn": ("SVHN", "chw", {"train": {"split": "train"}, "test": {"split": "test"}}, {}),
    "stl10": ("STL10", "chw", {"train": {"split": "train"}, "test": {"split": "test"}}, {}),
    "flowers102": (
        "Flowers102", "files",
        {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}, {},
    ),
    "dtd": (
        "DTD", "files",
        {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
        {"partition": 1},
    ),
    "oxford_pets": (
        "OxfordIIITPet", "files", {"train": {"split": "trainval"}, "test": {"split": "test"}},
        {"target_types": "category"},
    ),
    "food101": ("Food101", "files", {"train": {"split": "train"}, "test": {"split": "test"}}, {}),
    "gtsrb": ("GTSRB", "files", {"train": {"split": "train"}, "test": {"split": "test"}}, {}),
    "fgvc_aircraft": (
        "FGVCAircraft", "files",
        {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
        {"annotation_level": "variant"},
    ),
    "eurosat": ("EuroSAT", "files", {"train": {}}, {}),  # no official split
    "caltech101": ("Caltech101", "files", {"train": {}}, {"target_type": "category"}),
}

#: torchvision data sets ``load_splits`` knows; downloaded to ``root`` when missing.
TORCHVISION_DATASETS: tuple[str, ...] = tuple(_TV)

#: Training-batch augmentations ``BatchIterator(augment=...)`` knows (``data.augment``); see
#: :class:`BatchIterator` for when each is safe.
AUGMENT_MODES: tuple[str, ...] = ("none", "crop", "flip", "crop_flip")

_PATH_KINDS = ("imagefolder", "parquet")
_SYNTHETIC_DEFAULT_N = 2000
_SYNTHETIC_CLASSES = 10
_SYNTHETIC_SIZE = 32
_DOWNLOAD_SOCKET_TIMEOUT_S = 20.0
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _valid_specs_text() -> str:
    names = ", ".join(BUILTIN_DATASETS + TORCHVISION_DATASETS)
    return f"{names}, synthetic:N, imagefolder:PATH, parquet:PATH"


def _parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec into (kind, argument); names are case-insensitive and '-' means '_'."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data.dataset is empty; use one of: {_valid_specs_text()}")
    spec = spec.strip()
    head, sep, arg = spec.partition(":")
    kind = head.strip().lower().replace("-", "_")
    if sep:
        if kind in _PATH_KINDS:
            if not arg.strip():
                raise DataError(f"data.dataset '{spec}' has no path; write {kind}:/path/to/data")
            return kind, arg.strip()
        if kind == "synthetic":
            try:
                n = int(arg)
            except ValueError:
                n = 0
            if n < 1:
                raise DataError(
                    f"data.dataset '{spec}': the image count after 'synthetic:' must be a positive "
                    "integer, e.g. synthetic:2000"
                )
            return kind, str(n)
        raise DataError(
            f"unknown data.dataset '{spec}': only synthetic:, imagefolder: and parquet: take an "
            f"argument; valid: {_valid_specs_text()}"
        )
    if kind in BUILTIN_DATASETS or kind in _TV:
        return kind, None
    if kind in _PATH_KINDS:
        raise DataError(f"data.dataset '{spec}' has no path; write {kind}:/path/to/data")
    raise DataError(f"unknown data.dataset '{spec}'; valid: {_valid_specs_text()}")


def validate_dataset_spec(spec: str) -> None:
    """Check a spec's syntax without touching files or network (cheap, for config loading).

    Paths are not checked for existence here: the study file may be validated on a machine
    other than the one that reads the data.
    """
    _parse_spec(spec)


def default_root() -> str:
    """Where torchvision data sets live: ``$LORSP_DATA_ROOT`` or ``~/.cache/lorsp/data``."""
    return os.environ.get("LORSP_DATA_ROOT") or os.path.join(
        os.path.expanduser("~"), ".cache", "lorsp", "data"
    )


# --------------------------------------------------------------------------------------------
# Splitting (deterministic, stratified)
# --------------------------------------------------------------------------------------------


def _mix(*parts: int) -> int:
    """Combine integers into one generator seed; distinct streams must not collide."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


# generator streams: separate so e.g. changing val_fraction leaves the test split alone
_STREAM_TEST, _STREAM_VAL, _STREAM_CAP, _STREAM_SYNTH, _STREAM_ORDER, _STREAM_AUG = range(1, 7)


def _stratified_order(labels: Tensor, gen: torch.Generator) -> Tensor:
    """A random permutation of ``range(len(labels))`` whose every prefix is class-balanced.

    Each sample gets the key (rank within its class + u_class) / class size, so sorting by the
    key interleaves the classes in proportion; taking the first k of the result is a stratified
    sample of size exactly k (round-robin in proportion), which a per-class rounding is not.
    """
    n = labels.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    perm = torch.randperm(n, generator=gen)
    lab = labels[perm]
    grouped = perm[torch.sort(lab, stable=True).indices]
    glab = labels[grouped]
    counts = torch.bincount(glab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[glab]
    offset = torch.rand(counts.shape[0], generator=gen, dtype=torch.float64)
    key = (rank.double() + offset[glab]) / counts[glab].double()
    return grouped[torch.sort(key, stable=True).indices]


def _take(labels: Tensor, fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Split indices into (taken, rest) with ``round(fraction * n)`` taken, at least one each."""
    n = labels.shape[0]
    k = min(max(1, round(fraction * n)), n - 1)
    order = _stratified_order(labels, gen)
    return order[:k].sort().values, order[k:].sort().values


def _make_splits(
    parts: dict[str, ImageSplit],
    *,
    num_classes: int,
    class_names: list[str],
    source: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_train: int | None,
) -> Splits:
    """Turn a loader's official parts ('train' and optionally 'val', 'test') into Splits."""
    train = parts["train"]
    test = parts.get("test")
    val = parts.get("val")
    if test is None:
        if len(train) < 3:
            raise DataError(f"{source} has only {len(train)} images; need at least 3 to split")
        gen = torch.Generator().manual_seed(_mix(seed, _STREAM_TEST))
        test_idx, rest_idx = _take(train.labels, test_fraction, gen)
        test, train = train.subset(test_idx), train.subset(rest_idx)
    if val is None:
        if len(train) < 2:
            raise DataError(
                f"{source} leaves only {len(train)} training images; need at least 2 to split off "
                "validation (lower data.test_fraction or add images)"
            )
        gen = torch.Generator().manual_seed(_mix(seed, _STREAM_VAL))
        val_idx, train_idx = _take(train.labels, val_fraction, gen)
        val, train = train.subset(val_idx), train.subset(train_idx)
    if max_train is not None and max_train < len(train):
        gen = torch.Generator().manual_seed(_mix(seed, _STREAM_CAP))
        keep = _stratified_order(train.labels, gen)[:max_train].sort().values
        train = train.subset(keep)
    if num_classes < 2:
        raise DataError(f"{source} has only {num_classes} class; a classifier needs at least 2")
    for name, part in (("train", train), ("val", val), ("test", test)):
        if len(part) == 0:
            raise DataError(f"{source}: the {name} split is empty; add images or change the fractions")
        hi = int(part.labels.max())
        lo = int(part.labels.min())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{source}: {name} labels must lie in [0, {num_classes}), found {lo}..{hi} "
                "(unlabelled rows use -1: remove them or pick a labelled split)"
            )
    return Splits(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        class_names=list(class_names),
        source=source,
    )


# --------------------------------------------------------------------------------------------
# Decoding helpers (load time only)
# --------------------------------------------------------------------------------------------


def _decode_pil(img: Any, size: int) -> np.ndarray:
    """PIL image -> uint8 [size, size, 3]; JPEG ``draft`` lets libjpeg decode at reduced scale."""
    from PIL import Image

    if getattr(img, "format", None) == "JPEG":
        img.draft("RGB", (size, size))  # only ever reduces by powers of 2 down to >= size
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)  # PIL's bilinear antialiases
    return np.asarray(img, dtype=np.uint8)


def _decode_source(src: str | bytes | Path, size: int, what: str, fix: str) -> np.ndarray:
    """Decode one image; a failure is one DataError line `WHAT: cannot decode the image (why); FIX`.

    `what` says where the image lives (its file, or a Parquet file and row), because PIL's own
    message names only the object it was handed, e.g. `<_io.BytesIO object at 0x7f..>` for bytes.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        fp = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
        with Image.open(fp) as img:
            return _decode_pil(img, size)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{what}: cannot decode the image ({_decode_reason(e, src)}); {fix}") from e


def _decode_reason(err: BaseException, src: Any) -> str:
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


def _decode_many(
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


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"data.image_size must be a positive integer, got {image_size!r}")


# --------------------------------------------------------------------------------------------
# Loaders: each returns (parts, num_classes, class_names, source)
# --------------------------------------------------------------------------------------------

_Loaded = tuple[dict[str, ImageSplit], int, list[str], str]


def _load_digits() -> _Loaded:
    """scikit-learn ships these 1797 real handwritten digits, so tests and quickstarts run offline."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8))
    images = img[:, None].expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(d.target, dtype=torch.int64)
    h, w = img.shape[1:]
    return (
        {"train": ImageSplit(images, labels)},
        10,
        [str(i) for i in range(10)],
        f"digits (scikit-learn, {len(labels)} images {h}x{w})",
    )


def _hsv_rgb(hue: Tensor) -> Tensor:
    """Cheap hue -> RGB in [0,1] (a cosine colour wheel); distinct colours for distinct hues."""
    shifts = torch.tensor([0.0, 1.0 / 3.0, 2.0 / 3.0], dtype=hue.dtype)
    return 0.5 + 0.5 * torch.cos(2 * math.pi * (hue[:, None] - shifts[None, :]))


def _load_synthetic(n: int, seed: int) -> _Loaded:
    """Class-dependent images a model can learn but not trivially: oriented colour gratings.

    Class c is a sinusoidal grating at orientation c*pi/C with a class frequency and hue; each
    image has a random phase, orientation jitter, a colour partly drawn at random, and pixel noise,
    so neither colour nor orientation alone gives the answer perfectly.
    """
    c, s = _SYNTHETIC_CLASSES, _SYNTHETIC_SIZE
    g = torch.Generator().manual_seed(_mix(seed, _STREAM_SYNTH))
    labels = (torch.arange(n) % c)[torch.randperm(n, generator=g)]
    lab = labels.double()
    coords = torch.linspace(-1.0, 1.0, s, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    theta = lab * (math.pi / c) + 0.08 * torch.randn(n, generator=g, dtype=torch.float64)
    freq = 2.0 + (labels % 3).double() + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    proj = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]
    grating = 0.5 + 0.5 * torch.sin(math.pi * freq[:, None, None] * proj + phase[:, None, None])
    colour = 0.6 * _hsv_rgb(lab / c) + 0.4 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    img = 0.15 + 0.7 * grating[:, None] * colour[:, :, None, None]
    img = img + 0.1 * torch.randn(n, 3, s, s, generator=g, dtype=torch.float64)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return (
        {"train": ImageSplit(images, labels.to(torch.int64))},
        c,
        [f"class_{i}" for i in range(c)],
        f"synthetic ({n} images {s}x{s}, {c} classes, seed {seed})",
    )


def _resolve_path(kind: str, arg: str) -> Path:
    path = Path(os.path.expanduser(arg)).resolve()
    if not path.exists():
        raise DataError(f"{kind} path {path} does not exist; check data.dataset ('{kind}:PATH')")
    return path


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    files = [
        Path(dirpath) / f
        for dirpath, _, names in os.walk(folder, followlinks=True)
        for f in names
        if f.lower().endswith(_IMG_EXTENSIONS) and not f.startswith(".")
    ]
    return sorted(files)


def _scan_folder(folder: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """List (files, labels, class names) of one class-per-subfolder tree."""
    dirs = {d.name: d for d in _class_dirs(folder)}
    found = {name: _image_files(d) for name, d in dirs.items()}
    found = {name: files for name, files in found.items() if files}
    if classes is None:
        classes = sorted(found)
        if not classes:
            raise DataError(
                f"imagefolder {folder} has no class subfolders with images; expected "
                f"{folder}/<class>/<image>.png ({'/'.join(_IMG_EXTENSIONS)})"
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
    return files, labels, classes


def _decode_files(files: list[Path], labels: list[int], size: int) -> ImageSplit:
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    _decode_many(files, size, lambda f: _decode_source(f, size, str(f), "fix or delete that file"), out)
    return ImageSplit(out, torch.as_tensor(labels, dtype=torch.int64))


def _load_imagefolder(arg: str, image_size: int) -> _Loaded:
    """A torchvision-style folder; ``train/`` + ``test/`` (and/or ``val/``) give official splits.

    Images vary in size, so they are resized to ``image_size`` once at load time (PIL bilinear,
    antialiased; aspect ratio is not kept, like ``Resize((S, S))``).
    """
    root = _resolve_path("imagefolder", arg)
    if not root.is_dir():
        raise DataError(f"imagefolder path {root} is not a directory; use parquet: for a file")
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
    if official:
        files, labels, classes = _scan_folder(official["train"], None)
        parts = {"train": _decode_files(files, labels, image_size)}
        for name in ("val", "test"):
            if name in official:
                f2, l2, _ = _scan_folder(official[name], classes)
                parts[name] = _decode_files(f2, l2, image_size)
        layout = "+".join(p.name for p in official.values())
    else:
        files, labels, classes = _scan_folder(root, None)
        parts = {"train": _decode_files(files, labels, image_size)}
        layout = "one pool"
    total = sum(len(p) for p in parts.values())
    source = (
        f"imagefolder {root} ({total} images, {len(classes)} classes, {layout}, "
        f"resized to {image_size}x{image_size})"
    )
    return parts, len(classes), classes, source


def _parquet_role(rel: Path) -> str:
    """Which split a parquet file belongs to, from its path below the data directory."""
    text = "/".join(rel.parts).lower()
    if "test" in text:
        return "test"
    tokens = {t for t in "".join(ch if ch.isalnum() else " " for ch in text).split()}
    if tokens & {"val", "valid", "validation", "dev"}:
        return "val"
    return "train"


def _hf_class_names(schema: Any, label_column: str) -> list[str] | None:
    """Class names from the ``huggingface`` schema metadata that ``datasets`` writes, if any."""
    import json

    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feats = json.loads(meta)["info"]["features"][label_column]
        names = feats.get("names")
        return [str(x) for x in names] if names else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _load_parquet(arg: str, image_size: int, image_column: str, label_column: str) -> _Loaded:
    """Hugging Face style parquet: an encoded-image column and a label column, read with pyarrow.

    Files whose path (below PATH) contains 'test' form the test split, 'val'/'validation' the
    validation split; labels may be integers or strings (strings are mapped to sorted classes).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _resolve_path("parquet", arg)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise DataError(f"parquet directory {path} has no .parquet files")
        roles = {f: _parquet_role(f.relative_to(path)) for f in files}
    else:
        files, roles = [path], {path: "train"}
    if "train" not in roles.values():
        # Guessing which named split to train on would silently change the protocol.
        raise DataError(
            f"parquet directory {path} has no training files (every file name contains "
            "'test' or 'val'); put the training data in a file without those words"
        )
    if "test" not in roles.values() and "val" in roles.values():
        roles = {f: ("test" if r == "val" else r) for f, r in roles.items()}

    img_kind: dict[Path, str] = {}
    names: list[str] | None = None
    label_is_string = False
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"cannot read parquet file {f} ({str(e).splitlines()[0]})") from e
        cols = schema.names
        missing = [c for c in (image_column, label_column) if c not in cols]
        if missing:
            raise DataError(
                f"parquet file {f} has no column {', '.join(repr(m) for m in missing)}; its columns "
                f"are {', '.join(cols)}: set data.image_column / data.label_column"
            )
        itype = schema.field(image_column).type
        if pa.types.is_binary(itype) or pa.types.is_large_binary(itype):
            img_kind[f] = "binary"
        elif pa.types.is_struct(itype) and itype.get_field_index("bytes") >= 0:
            img_kind[f] = "struct"
        else:
            raise DataError(
                f"parquet column '{image_column}' in {f} has type {itype}; expected encoded image "
                "bytes or a struct with a 'bytes' field (set data.image_column)"
            )
        ltype = schema.field(label_column).type
        if pa.types.is_string(ltype) or pa.types.is_large_string(ltype):
            label_is_string = True
        elif not pa.types.is_integer(ltype):
            raise DataError(
                f"parquet column '{label_column}' in {f} has type {ltype}; expected integer class "
                "ids or class-name strings (set data.label_column)"
            )
        names = names or _hf_class_names(schema, label_column)

    by_role: dict[str, list[Path]] = {}
    for f in files:
        by_role.setdefault(roles[f], []).append(f)

    raw_labels: dict[str, list[Any]] = {}
    images: dict[str, Tensor] = {}
    for role, fs in by_role.items():
        n = sum(pq.ParquetFile(f).metadata.num_rows for f in fs)
        out = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
        labs: list[Any] = []
        pos = 0
        for f in fs:
            pf = pq.ParquetFile(f)
            row = 0  # within `f`, as pyarrow and pandas number it: the row a user can go and fix
            for batch in pf.iter_batches(batch_size=512, columns=[image_column, label_column]):
                col = batch.column(0)
                if img_kind[f] == "struct":
                    paths = col.field("path").to_pylist() if col.type.get_field_index("path") >= 0 else None
                    blobs = col.field("bytes").to_pylist()
                    if paths is not None:
                        # HF stores either the bytes or, for local data sets, only a path.
                        blobs = [
                            b if b is not None else (str(f.parent / p) if p else None)
                            for b, p in zip(blobs, paths)
                        ]
                else:
                    blobs = col.to_pylist()
                lab = batch.column(1).to_pylist()
                for i, (blob, value) in enumerate(zip(blobs, lab)):
                    if blob is None:
                        raise DataError(
                            f"parquet:{f} row {row + i}: image '{image_column}' is empty; fix or drop that row"
                        )
                    if value is None:
                        raise DataError(
                            f"parquet:{f} row {row + i}: label '{label_column}' is empty; fix or drop that row"
                        )
                _decode_many(
                    list(enumerate(blobs, start=row)),
                    image_size,
                    lambda item, f=f: _decode_source(item[1], image_size, f"parquet:{f} row {item[0]}",
                                                     "fix or drop that row"),
                    out,
                    start=pos,
                )
                labs.extend(lab)
                pos += len(lab)
                row += len(lab)
        images[role] = out
        raw_labels[role] = labs

    if label_is_string:
        classes = names or sorted({str(x) for labs in raw_labels.values() for x in labs})
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({str(x) for labs in raw_labels.values() for x in labs} - set(index))
        if unknown:
            raise DataError(f"parquet labels {unknown[:5]} are not in the class names {classes[:10]}")
        labels = {
            r: torch.as_tensor([index[str(x)] for x in labs], dtype=torch.int64)
            for r, labs in raw_labels.items()
        }
    else:
        labels = {r: torch.as_tensor(labs, dtype=torch.int64) for r, labs in raw_labels.items()}
        top = max(int(t.max()) for t in labels.values() if len(t))
        classes = names if names and len(names) > top else [str(i) for i in range(top + 1)]
    parts = {r: ImageSplit(images[r], labels[r]) for r in images}
    total = sum(len(p) for p in parts.values())
    where = f"{len(files)} file{'s' if len(files) > 1 else ''}: " + "+".join(sorted(by_role))
    source = (
        f"parquet {path} ({total} images, {len(classes)} classes, {where}, "
        f"resized to {image_size}x{image_size})"
    )
    return parts, len(classes), classes, source


def _open_torchvision(name: str, cls: Any, root: str, kwargs: dict[str, Any]) -> Any:
    """Open a torchvision data set, downloading it when missing, with a bounded network wait.

    The files are tried first without download so a prepared ``root`` never touches the
    network; the download gets a socket timeout (process-wide, restored afterwards) so an
    unreachable host fails in seconds instead of hanging a trial.
    """
    try:
        return cls(root=root, download=False, **kwargs)
    except Exception:  # not there / corrupted: torchvision raises RuntimeError; try downloading
        pass
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        return cls(root=root, download=True, **kwargs)
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0][:200] or type(e).__name__
        raise DataError(
            f"cannot download {name} to {root} ({type(e).__name__}: {reason}): put the files there "
            "(data.root) or use imagefolder:/parquet:"
        ) from e
    finally:
        socket.setdefaulttimeout(old)


def _tv_part(name: str, ds: Any, kind: str, image_size: int) -> ImageSplit:
    """Extract a torchvision data set as uint8 tensors, straight from its arrays where it has them."""
    if kind == "hwc":
        images = torch.from_numpy(np.asarray(ds.data, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    elif kind == "gray":
        data = torch.as_tensor(ds.data, dtype=torch.uint8)
        images = data[:, None].expand(-1, 3, -1, -1).contiguous()
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    elif kind == "chw":
        images = torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8))
        labels = torch.as_tensor(np.asarray(ds.labels), dtype=torch.int64)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1).contiguous()
    else:
        # ds was built with a transform that returns uint8 [S, S, 3] (see _load_torchvision).
        n = len(ds)
        images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
        labs = [0] * n

        def one(i: int) -> np.ndarray:
            try:
                arr, lab = ds[i]
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001 - any decode failure is a data problem
                raise DataError(f"cannot read image {i} of {name} ({e}); re-download it") from e
            labs[i] = int(lab)
            return arr

        _decode_many(range(n), image_size, one, images)
        labels = torch.as_tensor(labs, dtype=torch.int64)
    return ImageSplit(images, labels)


def _load_torchvision(name: str, root: str | None, image_size: int) -> _Loaded:
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise DataError(f"{name} needs torchvision: pip install torchvision ({e})") from e
    cls_name, kind, splits, extra = _TV[name]
    cls = getattr(tvd, cls_name, None)
    if cls is None:
        raise DataError(
            f"this torchvision has no {cls_name} data set; upgrade torchvision or use imagefolder:"
        )
    root = os.path.abspath(os.path.expanduser(root or default_root()))
    parts: dict[str, ImageSplit] = {}
    class_names: list[str] | None = None
    if kind == "files":
        # Variable-size files: the data set's own loader opens each, we decode it once, resized.
        # Passed to the constructor because some sets apply ``transforms``, built at init.
        extra = {**extra, "transform": functools.partial(_decode_pil, size=image_size)}
    for part, kwargs in splits.items():
        ds = _open_torchvision(name, cls, root, {**kwargs, **extra})
        parts[part] = _tv_part(name, ds, kind, image_size)
        if class_names is None:
            cn = getattr(ds, "classes", None) or getattr(ds, "categories", None)
            class_names = [str(c) for c in cn] if cn else None
    top = max(int(p.labels.max()) for p in parts.values())
    if class_names is None or len(class_names) <= top:
        class_names = [str(i) for i in range(top + 1)]
    h, w = parts["train"].image_shape
    sizes = "+".join(str(len(parts[p])) for p in ("train", "val", "test") if p in parts)
    stored = f"{h}x{w}" if kind != "files" else f"resized to {h}x{w}"
    source = f"{name} (torchvision, {root}, {sizes} images {stored})"
    return parts, len(class_names), class_names, source


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
    the device by :class:`BatchIterator`; sets of variable-size files (imagefolder, parquet,
    Flowers, DTD, ...) must be made uniform once, so they are stored at ``image_size``.
    ``val_fraction`` is used only without an official validation split, ``test_fraction`` only
    without an official test split. ``max_train`` caps the training split (stratified,
    deterministic) after validation has been taken, so the validation set stays comparable.
    """
    kind, arg = _parse_spec(spec)
    _check_size(image_size)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    if max_train is not None and max_train < 1:
        raise DataError(f"data.max_train must be a positive integer or null, got {max_train}")
    if kind == "digits":
        loaded = _load_digits()
    elif kind == "synthetic":
        loaded = _load_synthetic(int(arg) if arg else _SYNTHETIC_DEFAULT_N, seed)
    elif kind == "imagefolder":
        assert arg is not None
        loaded = _load_imagefolder(arg, image_size)
    elif kind == "parquet":
        assert arg is not None
        loaded = _load_parquet(arg, image_size, image_column, label_column)
    else:
        loaded = _load_torchvision(kind, root, image_size)
    parts, num_classes, class_names, source = loaded
    return _make_splits(
        parts,
        num_classes=num_classes,
        class_names=class_names,
        source=source,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        max_train=max_train,
    )


def load_splits_for(data: Any) -> Splits:
    """The splits a study's `data` section (a :class:`lorsp.config.DataConfig`) describes."""
    return load_splits(data.dataset, image_size=data.image_size, val_fraction=data.val_fraction,
                       test_fraction=data.test_fraction, seed=data.seed, max_train=data.max_train,
                       root=data.root, image_column=data.image_column, label_column=data.label_column)


# --------------------------------------------------------------------------------------------
# Batches on the device
# --------------------------------------------------------------------------------------------


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
        _check_size(image_size)
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
        n = self.num_total
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, _STREAM_ORDER, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[self.rank : total : self.world_size]

    def _generator(self) -> tuple[torch.Generator, torch.device]:
        """A generator on the device when the backend has one, so random draws need no transfer."""
        s = _mix(self.seed, _STREAM_AUG, self.epoch, self.rank)
        try:
            return torch.Generator(device=self.device).manual_seed(s), self.device
        except RuntimeError:
            return torch.Generator().manual_seed(s), torch.device("cpu")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        index = self.shard_indices().to(self.device, non_blocking=True)
        crop, flip = self.augment in ("crop", "crop_flip"), self.augment in ("flip", "crop_flip")
        gen = self._generator() if crop or flip else None
        for b in range(len(self)):
            idx = index[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            y = self.labels.index_select(0, idx)
            if gen is not None:
                x = _random_crop_flip(x, *gen, self.device, crop=crop, flip=flip)
            yield self._to_float(x), y

    def _to_float(self, x: Tensor) -> Tensor:
        x = x.float().div_(255.0)
        h, w = x.shape[-2:]
        s = self.image_size
        if (h, w) != (s, s):
            x = F.interpolate(
                x, size=(s, s), mode="bilinear", align_corners=False, antialias=(h > s or w > s)
            )
            x = x.clamp_(0.0, 1.0)  # bilinear with antialias can overshoot by rounding
        return x


def _random_crop_flip(
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
