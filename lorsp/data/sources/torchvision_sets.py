"""Named torchvision data sets (``cifar10``, ``cifar100``, ``mnist``, ``flowers102``, ...).

The official splits are used as torchvision defines them. A set is read from ``data.root`` (default
:func:`torchvision_root`) and downloaded there only when missing, with a bounded network wait. Sets
that keep their images as one array are taken from it at native resolution; sets of variable-size
files are decoded once, resized to ``image_size``. torchvision is imported only when one is loaded.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from lorsp.data.containers import ImageSplit
from lorsp.data.decode import decode_many, decode_pil, decode_reason
from lorsp.data.sources.base import DatasetSpec, Loaded, LoadOptions
from lorsp.errors import DataError

__all__ = ["TORCHVISION_DATASETS", "TORCHVISION_SETS", "TorchvisionSet", "torchvision_root", "load_torchvision"]

_DOWNLOAD_SOCKET_TIMEOUT_S = 20.0

#: How a torchvision class exposes its images:
#:   "hwc": ``.data`` numpy uint8 [N,H,W,3] + ``.targets``        (CIFAR)
#:   "gray": ``.data`` tensor uint8 [N,H,W] + ``.targets``        (MNIST family)
#:   "chw": ``.data`` numpy uint8 [N,3,H,W] + ``.labels``         (SVHN, STL10)
#:   "files": one file per image; decoded once and resized to image_size (variable sizes)
Layout = Literal["hwc", "gray", "chw", "files"]


class TorchvisionSet(NamedTuple):
    """How to open one torchvision data set and read its images."""

    class_name: str  # the class in ``torchvision.datasets``
    layout: Layout
    parts: dict[str, dict[str, Any]]  # our split name -> the constructor's split arguments
    extra: Mapping[str, Any] = MappingProxyType({})  # constructor arguments common to every split


_OFFICIAL_TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
_SPLIT_TRAIN_TEST = {"train": {"split": "train"}, "test": {"split": "test"}}
_SPLIT_TRAIN_VAL_TEST = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}

#: The torchvision data sets ``load_splits`` knows, by spec name.
TORCHVISION_SETS: dict[str, TorchvisionSet] = {
    "cifar10": TorchvisionSet("CIFAR10", "hwc", _OFFICIAL_TRAIN_TEST),
    "cifar100": TorchvisionSet("CIFAR100", "hwc", _OFFICIAL_TRAIN_TEST),
    "mnist": TorchvisionSet("MNIST", "gray", _OFFICIAL_TRAIN_TEST),
    "fashion_mnist": TorchvisionSet("FashionMNIST", "gray", _OFFICIAL_TRAIN_TEST),
    "kmnist": TorchvisionSet("KMNIST", "gray", _OFFICIAL_TRAIN_TEST),
    "svhn": TorchvisionSet("SVHN", "chw", _SPLIT_TRAIN_TEST),
    "stl10": TorchvisionSet("STL10", "chw", _SPLIT_TRAIN_TEST),
    "flowers102": TorchvisionSet("Flowers102", "files", _SPLIT_TRAIN_VAL_TEST),
    "dtd": TorchvisionSet("DTD", "files", _SPLIT_TRAIN_VAL_TEST, {"partition": 1}),
    "oxford_pets": TorchvisionSet(
        "OxfordIIITPet", "files", {"train": {"split": "trainval"}, "test": {"split": "test"}},
        {"target_types": "category"},
    ),
    "food101": TorchvisionSet("Food101", "files", _SPLIT_TRAIN_TEST),
    "gtsrb": TorchvisionSet("GTSRB", "files", _SPLIT_TRAIN_TEST),
    "fgvc_aircraft": TorchvisionSet("FGVCAircraft", "files", _SPLIT_TRAIN_VAL_TEST, {"annotation_level": "variant"}),
    "eurosat": TorchvisionSet("EuroSAT", "files", {"train": {}}),  # no official split
    "caltech101": TorchvisionSet("Caltech101", "files", {"train": {}}, {"target_type": "category"}),
}

#: torchvision data sets ``load_splits`` knows; downloaded to ``root`` when missing.
TORCHVISION_DATASETS: tuple[str, ...] = tuple(TORCHVISION_SETS)


def torchvision_root() -> str:
    """Where torchvision data sets live: ``$LORSP_DATA_ROOT`` or ``~/.cache/lorsp/data``."""
    return os.environ.get("LORSP_DATA_ROOT") or os.path.join(
        os.path.expanduser("~"), ".cache", "lorsp", "data"
    )


def _open_torchvision(name: str, cls: Any, root: str, kwargs: dict[str, Any]) -> Any:
    """Open a torchvision data set, downloading it when missing, with a bounded network wait.

    The files are tried first without download so a prepared ``root`` never touches the
    network; the download gets a socket timeout (process-wide, restored afterwards) so an
    unreachable host fails in seconds instead of hanging a trial. A set whose files are there but
    cannot be read (a damaged file that torchvision's own checks let through) is reported as that,
    not as a failed download.
    """
    # Not there or corrupted (torchvision raises RuntimeError, or whatever its parser hits): download.
    try:
        return cls(root=root, download=False, **kwargs)
    except Exception as e:
        unread = e
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        return cls(root=root, download=True, **kwargs)
    except Exception as e:
        missing = "download=True" in str(unread) or isinstance(unread, FileNotFoundError)  # torchvision's words
        if not missing:  # the files are there and failed to read: a download cannot be what is wrong
            raise DataError(
                f"cannot read {name} in {root} ({type(unread).__name__}: {_first_line(unread)}): its files "
                f"there are damaged; delete its folder there to download {name} again"
            ) from unread
        reason = _first_line(e)
        raise DataError(
            f"cannot download {name} to {root} ({type(e).__name__}: {reason}): put the files there "
            "(data.root) or use imagefolder:/parquet:"
        ) from e
    finally:
        socket.setdefaulttimeout(old)


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0][:200] or type(err).__name__


def _file_of(ds: Any, i: int) -> str | None:
    """The file that holds image ``i`` of a torchvision set of files, where the set says (None if not)."""
    for attr in ("samples", "_samples"):  # ImageFolder (EuroSAT), GTSRB: (path, label) pairs
        items = getattr(ds, attr, None)
        if isinstance(items, list) and i < len(items):
            return str(items[i][0])
    for attr in ("_image_files", "_images"):  # Flowers102, DTD, Food101, FGVCAircraft; OxfordIIITPet
        items = getattr(ds, attr, None)
        if isinstance(items, list) and i < len(items):
            return str(items[i])
    if all(hasattr(ds, a) for a in ("categories", "index", "y", "root")):  # Caltech101
        return os.path.join(ds.root, "101_ObjectCategories", ds.categories[ds.y[i]], f"image_{ds.index[i]:04d}.jpg")
    return None


def _unreadable_file(name: str, ds: Any, i: int, root: str, err: BaseException) -> DataError:
    """One line for an image of a torchvision set that cannot be read: its file where known, and the fix
    (torchvision checks a set's archives or folders, not every image, so only a new download cures it)."""
    path = _file_of(ds, i)
    if path is None:
        return DataError(f"cannot read image {i} of {name} in {root} ({_first_line(err)}); delete {name}'s "
                         f"folder there to download it again")
    rel = os.path.relpath(path, root)
    folder = os.path.join(root, rel.split(os.sep)[0]) if not rel.startswith("..") else os.path.dirname(path)
    return DataError(f"{path}: cannot decode the image ({decode_reason(err, path)}); image {i} of {name}: "
                     f"delete {folder} to download {name} again")


def _tv_part(name: str, ds: Any, layout: Layout, image_size: int, root: str) -> ImageSplit:
    """Extract a torchvision data set as uint8 tensors, straight from its arrays where it has them."""
    if layout == "hwc":
        images = torch.from_numpy(np.asarray(ds.data, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    elif layout == "gray":
        data = torch.as_tensor(ds.data, dtype=torch.uint8)
        images = data[:, None].expand(-1, 3, -1, -1).contiguous()
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    elif layout == "chw":
        images = torch.from_numpy(np.ascontiguousarray(ds.data, dtype=np.uint8))
        labels = torch.as_tensor(np.asarray(ds.labels), dtype=torch.int64)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1).contiguous()
    else:
        # ds was built with a transform that returns uint8 [S, S, 3] (see load_torchvision).
        n = len(ds)
        images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
        labs = [0] * n

        def one(i: int) -> np.ndarray:
            try:
                arr, lab = ds[i]
            except DataError:
                raise
            except Exception as e:  # any decode failure is a data problem
                raise _unreadable_file(name, ds, i, root, e) from e
            labs[i] = int(lab)
            return arr

        decode_many(range(n), image_size, one, images)
        labels = torch.as_tensor(labs, dtype=torch.int64)
    return ImageSplit(images, labels)


def load_torchvision(spec: DatasetSpec, options: LoadOptions) -> Loaded:
    """Read (or download) every official split of the set ``spec.kind`` names."""
    name, image_size = spec.kind, options.image_size
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise DataError(f"{name} needs torchvision: pip install torchvision ({e})") from e
    entry = TORCHVISION_SETS[name]
    cls = getattr(tvd, entry.class_name, None)
    if cls is None:
        raise DataError(
            f"this torchvision has no {entry.class_name} data set; upgrade torchvision or use imagefolder:"
        )
    root = os.path.abspath(os.path.expanduser(options.root or torchvision_root()))
    parts: dict[str, ImageSplit] = {}
    class_names: list[str] | None = None
    extra = entry.extra
    if entry.layout == "files":
        # Variable-size files: the data set's own loader opens each, we decode it once, resized.
        # Passed to the constructor because some sets apply ``transforms``, built at init.
        extra = {**extra, "transform": functools.partial(decode_pil, size=image_size)}
    for part, kwargs in entry.parts.items():
        ds = _open_torchvision(name, cls, root, {**kwargs, **extra})
        parts[part] = _tv_part(name, ds, entry.layout, image_size, root)
        if class_names is None:
            cn = getattr(ds, "classes", None) or getattr(ds, "categories", None)
            class_names = [str(c) for c in cn] if cn else None
    top = max(int(p.labels.max()) for p in parts.values())
    if class_names is None or len(class_names) <= top:
        class_names = [str(i) for i in range(top + 1)]
    h, w = parts["train"].image_shape
    sizes = "+".join(str(len(parts[p])) for p in ("train", "val", "test") if p in parts)
    stored = f"{h}x{w}" if entry.layout != "files" else f"resized to {h}x{w}"
    source = f"{name} (torchvision, {root}, {sizes} images {stored})"
    return Loaded(parts, len(class_names), class_names, source)
