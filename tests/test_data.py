"""Tests for lorsp.data: offline loaders, deterministic splits, errors users can act on, batching."""

from __future__ import annotations

import io
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lorsp.data import (
    AUGMENT_MODES,
    BatchIterator,
    DataError,
    ImageSplit,
    Splits,
    load_splits,
    validate_dataset_spec,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (12, 10), mode: str = "RGB") -> bytes:
    from PIL import Image

    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


_COLOURS = {"cat": (250, 10, 10), "dog": (10, 250, 10), "eel": (10, 10, 250)}


def _write_folder(root: Path, per_class: int, classes: tuple[str, ...] = ("cat", "dog", "eel")) -> None:
    for name in classes:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # varying sizes and a grayscale file: the loader must normalise both
            mode = "L" if i == 0 else "RGB"
            (d / f"{i}.png").write_bytes(_png_bytes(_COLOURS[name], (8 + i, 6 + 2 * i), mode))


def _all_ids(splits: Splits) -> list[bytes]:
    """Content fingerprints of every image, to compare splits without knowing internal indices."""
    return [img.numpy().tobytes() for part in (splits.train, splits.val, splits.test) for img in part.images]


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits("digits", image_size=16, seed=0)


# --------------------------------------------------------------------------------------------
# loaders and splits
# --------------------------------------------------------------------------------------------


def test_digits_shapes_classes_and_split_sizes(digits: Splits) -> None:
    s = digits
    assert s.num_classes == 10 and s.class_names == [str(i) for i in range(10)]
    assert "digits" in s.source and "1797" in s.source
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.test) == round(0.2 * 1797)
    assert len(s.val) == round(0.1 * (1797 - len(s.test)))
    for part in (s.train, s.val, s.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 8, 8)
        assert part.labels.dtype == torch.int64
        # grayscale replicated to 3 channels, full 0..255 range used
        assert torch.equal(part.images[:, 0], part.images[:, 2])
    assert int(s.train.images.max()) == 255
    # stratified: every class in every split, test class counts within 1-2 of proportional
    for part in (s.train, s.val, s.test):
        assert set(part.labels.tolist()) == set(range(10))
    counts = torch.bincount(s.test.labels, minlength=10).float()
    assert (counts - counts.mean()).abs().max() <= 3


def test_digits_splits_disjoint_and_cover_all(digits: Splits) -> None:
    from sklearn.datasets import load_digits

    # digits contains some exact duplicate images, so compare (image, label) multisets
    ref = load_digits()
    ref_imgs = np.rint(ref.images * (255 / 16)).astype(np.uint8)
    ref_keys = sorted(img.tobytes() + bytes([t]) for img, t in zip(ref_imgs, ref.target))
    got = []
    for part in (digits.train, digits.val, digits.test):
        got += [img[0].numpy().tobytes() + bytes([int(t)]) for img, t in zip(part.images, part.labels)]
    assert sorted(got) == ref_keys  # a sample lost or duplicated across splits would break this


def test_splits_deterministic_per_seed(digits: Splits) -> None:
    again = load_splits("digits", image_size=16, seed=0)
    other = load_splits("digits", image_size=16, seed=1)
    assert torch.equal(again.test.images, digits.test.images)
    assert torch.equal(again.val.labels, digits.val.labels)
    assert torch.equal(again.train.images, digits.train.images)
    assert not torch.equal(other.test.images, digits.test.images)
    # the test split does not move when only val_fraction or max_train change
    v = load_splits("digits", image_size=16, seed=0, val_fraction=0.3, max_train=100)
    assert torch.equal(v.test.images, digits.test.images)
    assert len(v.train) == 100 and set(v.train.labels.tolist()) == set(range(10))


def test_splits_pickle_roundtrip(digits: Splits) -> None:
    back = pickle.loads(pickle.dumps(digits))
    assert isinstance(back, Splits)
    assert torch.equal(back.train.images, digits.train.images)
    assert back.class_names == digits.class_names and back.source == digits.source


def test_synthetic_loads_and_is_class_dependent() -> None:
    s = load_splits("synthetic:500", image_size=32, seed=3)
    assert s.num_classes == 10
    assert len(s.train) + len(s.val) + len(s.test) == 500
    assert s.train.images.shape[1:] == (3, 32, 32) and s.train.images.dtype == torch.uint8
    assert torch.equal(load_splits("synthetic:500", image_size=32, seed=3).train.images, s.train.images)
    # class means differ more between classes than the noise within one: learnable signal
    x = s.train.images.float()
    means = torch.stack([x[s.train.labels == c].mean(0) for c in range(10)])
    assert (means[0] - means[5]).abs().mean() > 5.0
    default = load_splits("synthetic", image_size=32)
    assert len(default.train) + len(default.val) + len(default.test) == 2000


def test_imagefolder_pool(tmp_path: Path) -> None:
    _write_folder(tmp_path / "pics", per_class=10)
    s = load_splits(f"imagefolder:{tmp_path / 'pics'}", image_size=20, seed=0)
    assert s.class_names == ["cat", "dog", "eel"] and s.num_classes == 3
    assert len(s.train) + len(s.val) + len(s.test) == 30
    assert s.train.images.shape[1:] == (3, 20, 20)
    # the decoded colour matches the class folder (files resized, grayscale converted to RGB)
    for img, lab in zip(s.train.images, s.train.labels):
        name = s.class_names[int(lab)]
        centre = img[:, 10, 10].tolist()
        expected = _COLOURS[name]
        if len(set(centre)) == 1:  # the grayscale file: luminance of the class colour
            continue
        assert centre == list(expected)


def test_imagefolder_official_train_test(tmp_path: Path) -> None:
    _write_folder(tmp_path / "d" / "train", per_class=6)
    _write_folder(tmp_path / "d" / "test", per_class=2, classes=("cat", "eel"))
    s = load_splits(f"imagefolder:{tmp_path / 'd'}", image_size=8, seed=0, val_fraction=0.2)
    assert len(s.test) == 4  # exactly the test/ folder
    assert sorted(s.test.labels.tolist()) == [0, 0, 2, 2]  # labels follow train/'s class order
    assert len(s.train) + len(s.val) == 18 and len(s.val) == round(0.2 * 18)
    assert "train+test" in s.source


def test_parquet_hf_struct_and_binary(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def rows(n: int) -> tuple[list[bytes], list[int]]:
        labels = [i % 3 for i in range(n)]
        return [_png_bytes(list(_COLOURS.values())[label]) for label in labels], labels

    # HF layout: a directory with train/test files and the image as {"bytes", "path"} struct
    d = tmp_path / "hf" / "data"
    d.mkdir(parents=True)
    for split, n in (("train", 30), ("test", 9)):
        imgs, labels = rows(n)
        struct = pa.array(
            [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(imgs)],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
        table = pa.table({"image": struct, "label": pa.array(labels, pa.int64())})
        pq.write_table(table, d / f"{split}-00000-of-00001.parquet")
    s = load_splits(f"parquet:{tmp_path / 'hf'}", image_size=12, seed=0)
    assert len(s.test) == 9 and len(s.train) + len(s.val) == 30
    assert s.num_classes == 3 and s.train.images.shape[1:] == (3, 12, 12)
    assert s.test.images[s.test.labels == 1][:, :, 6, 6].tolist()[0] == list(_COLOURS["dog"])

    # one plain-binary file, custom column names: pool split by test_fraction
    imgs, labels = rows(20)
    f = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"img": pa.array(imgs, pa.binary()), "y": pa.array(labels, pa.int32())}), f)
    s2 = load_splits(f"parquet:{f}", image_size=10, image_column="img", label_column="y", seed=0)
    assert len(s2.train) + len(s2.val) + len(s2.test) == 20 and len(s2.test) == 4
    assert s2.train.images.dtype == torch.uint8


# --------------------------------------------------------------------------------------------
# errors: one line, names the problem and the fix
# --------------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(DataError) as e:
        validate_dataset_spec("cifar1000")
    msg = str(e.value)
    assert "cifar1000" in msg and "cifar100" in msg and "digits" in msg and "imagefolder:PATH" in msg
    assert "\n" not in msg
    for ok in ("digits", "CIFAR10", "fashion-mnist", "synthetic:50", "imagefolder:/x", "parquet:y.parquet"):
        validate_dataset_spec(ok)
    for bad in ("synthetic:abc", "imagefolder:", "digits:3", ""):
        with pytest.raises(DataError):
            validate_dataset_spec(bad)


def test_missing_path(tmp_path: Path) -> None:
    for kind in ("imagefolder", "parquet"):
        with pytest.raises(DataError, match="does not exist") as e:
            load_splits(f"{kind}:{tmp_path / 'nope'}", image_size=8)
        assert str(tmp_path / "nope") in str(e.value)


def test_empty_folder_and_single_class(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders") as e:
        load_splits(f"imagefolder:{tmp_path / 'empty'}", image_size=8)
    assert "<class>/<image>" in str(e.value)
    _write_folder(tmp_path / "one", per_class=4, classes=("cat",))
    with pytest.raises(DataError, match="only one class"):
        load_splits(f"imagefolder:{tmp_path / 'one'}", image_size=8)


def test_unreadable_image(tmp_path: Path) -> None:
    _write_folder(tmp_path / "bad", per_class=12, classes=("cat", "dog"))  # > 8 files: the thread pool decodes
    broken = tmp_path / "bad" / "dog" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        load_splits(f"imagefolder:{tmp_path / 'bad'}", image_size=8)
    assert str(e.value) == (f"{broken}: cannot decode the image (not a format PIL can read; it starts with "
                            "b'not a pn'); fix or delete that file")
    # A truncated file among good ones: PIL's own reason, the file, no object repr.
    broken.unlink()
    cut = tmp_path / "bad" / "cat" / "5.png"
    cut.write_bytes(cut.read_bytes()[:50])  # signature, header and part of the pixel data
    with pytest.raises(DataError) as e:
        load_splits(f"imagefolder:{tmp_path / 'bad'}", image_size=8)
    message = str(e.value)
    assert message == f"{cut}: cannot decode the image (image file is truncated); fix or delete that file"
    assert " at 0x" not in message and "\n" not in message


def test_undecodable_parquet_image_names_file_and_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = [_png_bytes(c) for c in _COLOURS.values()]
    d = tmp_path / "pq"
    d.mkdir()

    def write(name: str, blobs: list[bytes]) -> Path:
        labels = [i % 3 for i in range(len(blobs))]
        pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array(labels, pa.int64())}),
                       d / name)
        return d / name

    write("train-00000.parquet", [good[i % 3] for i in range(20)])
    # Row 530 of the second file: past the loader's first 512-row batch and the first file's 20 rows.
    blobs = [good[i % 3] for i in range(600)]
    blobs[530] = b"<html>502</html>"
    second = write("train-00001.parquet", blobs)
    with pytest.raises(DataError) as e:
        load_splits(f"parquet:{d}", image_size=8)
    assert str(e.value) == (f"parquet:{second} row 530: cannot decode the image (not a format PIL can read; "
                            "it starts with b'<html>50'); fix or drop that row")
    # A truncated PNG: PIL's reason, without the `<_io.BytesIO object at 0x...>` it would name.
    blobs[530] = good[0][:50]
    write("train-00001.parquet", blobs)
    with pytest.raises(DataError) as e:
        load_splits(f"parquet:{d}", image_size=8)
    message = str(e.value)
    assert message == (f"parquet:{second} row 530: cannot decode the image (image file is truncated); "
                       "fix or drop that row")
    # An empty cell is reported at its row in its own file, too.
    blobs[530] = None
    write("train-00001.parquet", blobs)
    with pytest.raises(DataError, match=rf"^parquet:{second} row 530: image 'image' is empty; fix or drop that row$"):
        load_splits(f"parquet:{d}", image_size=8)


def test_parquet_wrong_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"pixels": pa.array([b"x"], pa.binary()), "target": pa.array([0])}), f)
    with pytest.raises(DataError) as e:
        load_splits(f"parquet:{f}", image_size=8)
    msg = str(e.value)
    assert "'image'" in msg and "pixels" in msg and "target" in msg
    assert "data.image_column" in msg and "data.label_column" in msg


def test_torchvision_without_files_or_network(tmp_path: Path) -> None:
    import socket

    try:  # this test is about the offline failure; with network it would download 160 MB
        socket.getaddrinfo("www.cs.toronto.edu", 443)
        pytest.skip("network available: the offline download failure cannot be observed")
    except OSError:
        pass
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        load_splits("cifar100", image_size=32, root=str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"cannot download cifar100 to {tmp_path}")
    assert "imagefolder:/parquet:" in msg
    assert time.monotonic() - start < 60
    assert socket.getdefaulttimeout() is None  # the download timeout was restored


# --------------------------------------------------------------------------------------------
# BatchIterator
# --------------------------------------------------------------------------------------------


def _numbered_split(n: int, size: int = 4) -> ImageSplit:
    """Images whose pixel (0,0,0) holds their index, so a batch reveals which samples it holds."""
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n, dtype=torch.int64) % 5)


def test_batches_shapes_dtypes_range(digits: Splits) -> None:
    it = BatchIterator(digits.train, batch_size=64, image_size=24, augment="crop_flip", shuffle=True)
    batches = list(it)
    assert len(batches) == len(it) == -(-len(digits.train) // 64)
    x, y = batches[0]
    assert x.shape == (64, 3, 24, 24) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert batches[-1][0].shape[0] == len(digits.train) - 64 * (len(batches) - 1)
    # same stored size as image_size: no resize, values are exactly k/255
    x2, _ = next(iter(BatchIterator(digits.val, batch_size=8, image_size=8)))
    assert torch.equal(x2 * 255, (x2 * 255).round())


def test_epoch_covers_every_sample_once_without_shuffle() -> None:
    split = _numbered_split(37)
    it = BatchIterator(split, batch_size=8, image_size=4)
    seen = torch.cat([x[:, 0, 0, 0] for x, _ in it]).mul(255).round().long()
    assert seen.tolist() == list(range(37))
    labels = torch.cat([y for _, y in it])
    assert torch.equal(labels, split.labels)
    assert len(BatchIterator(split, batch_size=8, image_size=4, drop_last=True)) == 4


def test_two_ranks_disjoint_equal_shards() -> None:
    split = _numbered_split(41)
    shards = []
    for rank in range(2):
        it = BatchIterator(split, batch_size=6, image_size=4, shuffle=True, seed=5, rank=rank, world_size=2)
        it.set_epoch(3)
        shards.append(torch.cat([x[:, 0, 0, 0] for x, _ in it]).mul(255).round().long().tolist())
        assert len(it) == 4
    assert len(shards[0]) == len(shards[1]) == 21  # 41 padded to 42
    assert set(shards[0]) | set(shards[1]) == set(range(41))
    # only the one padding sample may appear on both ranks
    assert len(set(shards[0]) & set(shards[1])) <= 1
    assert len(shards[0]) + len(shards[1]) - 42 == 0


def test_set_epoch_reshuffles_deterministically() -> None:
    split = _numbered_split(50)

    def order(epoch: int, augment: str = "none") -> list[list[float]]:
        it = BatchIterator(split, batch_size=50, image_size=4, shuffle=True, augment=augment, seed=1)
        it.set_epoch(epoch)
        return next(iter(it))[0].flatten(1).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(1) == order(1)
    assert order(2, augment="crop_flip") == order(2, augment="crop_flip")


def _which_views(x: torch.Tensor, stored: torch.Tensor, pad: int) -> list[set[tuple[int, int, bool]]]:
    """For each output image, every (row shift, column shift, mirrored) view of its stored image it equals.

    A view is a window of the zero-padded image, optionally mirrored left-right: what a random
    crop with zero padding and/or a horizontal flip may produce, and nothing else.
    """
    n, _, h, w = stored.shape
    padded = torch.nn.functional.pad(stored, (pad, pad, pad, pad))
    out = []
    for i in range(n):
        views = set()
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                window = padded[i, :, dy : dy + h, dx : dx + w]
                for mirrored in (False, True):
                    if torch.equal(x[i], window.flip(-1) if mirrored else window):
                        views.add((dy - pad, dx - pad, mirrored))
        out.append(views)
    return out


@pytest.mark.parametrize("mode", AUGMENT_MODES)
def test_each_augment_mode_does_exactly_its_transform(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=gen)  # no zeros: pads show
    split = ImageSplit(images, torch.zeros(64, dtype=torch.int64))
    x, _ = next(iter(BatchIterator(split, batch_size=64, image_size=16, augment=mode, seed=0)))
    assert x.shape == (64, 3, 16, 16)
    views = _which_views((x * 255).round().to(torch.uint8), images, pad=2)  # pad = 16 / 8
    assert all(views), "an output is not a shifted and/or mirrored copy of its image"
    shifted = sum(any(dy or dx for dy, dx, _ in v) and not any(dy == dx == 0 for dy, dx, _ in v) for v in views)
    mirrored = sum(all(m for _, _, m in v) for v in views)
    crop, flip = mode in ("crop", "crop_flip"), mode in ("flip", "crop_flip")
    if crop:
        assert shifted > 40  # 24 of 25 offsets move the image
        assert len({(dy, dx) for v in views for dy, dx, _ in v}) > 10  # offsets vary
    else:
        assert shifted == 0 and all(any(dy == dx == 0 for dy, dx, _ in v) for v in views)
    if flip:
        assert 10 < mirrored < 54  # about half
    else:
        assert mirrored == 0
    if mode == "none":
        assert torch.equal(x, images.float() / 255)


def test_augment_draws_follow_the_seed_and_a_boolean_is_refused() -> None:
    split = _numbered_split(40, size=16)

    def batch(seed: int) -> torch.Tensor:
        return next(iter(BatchIterator(split, batch_size=40, image_size=16, augment="crop_flip", seed=seed)))[0]

    assert torch.equal(batch(3), batch(3)) and not torch.equal(batch(3), batch(4))
    for bad in (True, False, "crop+flip"):
        with pytest.raises(ValueError, match="none, crop, flip, crop_flip"):
            BatchIterator(split, batch_size=8, image_size=16, augment=bad)


def test_augment_modes_are_the_configs() -> None:
    from lorsp.config import AUGMENT_MODES as CONFIG_MODES
    from lorsp.config import DataConfig

    assert CONFIG_MODES == AUGMENT_MODES == ("none", "crop", "flip", "crop_flip")
    assert DataConfig().augment == "none"


# --------------------------------------------------------------------------------------------
# torchvision data sets prepared on disk (the real torchvision classes read them, offline)
# --------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0x08 = uint8, ndim), big-endian dims, raw bytes."""
    import struct

    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_array_set_from_prepared_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    s = load_splits("mnist", image_size=32, root=str(tmp_path), seed=0)
    assert len(s.test) == 12 and len(s.train) + len(s.val) == 40 and len(s.val) == 4
    assert s.train.images.shape[1:] == (3, 28, 28)  # native resolution, resized per batch
    assert torch.equal(s.train.images[:, 0], s.train.images[:, 1])
    assert s.num_classes == 10 and s.class_names[0].startswith("0")
    assert "mnist (torchvision" in s.source


def test_torchvision_file_set_from_prepared_files(tmp_path: Path) -> None:
    from PIL import Image

    base = tmp_path / "eurosat" / "2750"
    for c, name in enumerate(("Forest", "River", "Sea")):
        (base / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (64, 64), list(_COLOURS.values())[c]).save(base / name / f"{i}.jpg", quality=95)
    s = load_splits("eurosat", image_size=16, root=str(tmp_path), seed=0)  # no official split
    assert s.class_names == ["Forest", "River", "Sea"]
    assert len(s.train) + len(s.val) + len(s.test) == 18
    assert s.train.images.shape[1:] == (3, 16, 16)
    for img, lab in zip(s.train.images, s.train.labels):
        want = torch.tensor(list(_COLOURS.values())[int(lab)], dtype=torch.float32)
        assert (img[:, 8, 8].float() - want).abs().max() <= 12  # JPEG is lossy


def test_torchvision_damaged_files_are_one_line_naming_them(tmp_path: Path) -> None:
    from PIL import Image

    # A set of image files (EuroSAT): the damaged file itself, and the folder whose deletion re-downloads it.
    base = tmp_path / "eurosat" / "2750"
    for c, name in enumerate(("Forest", "River", "Sea")):
        (base / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (64, 64), list(_COLOURS.values())[c]).save(base / name / f"{i}.jpg", quality=95)
    bad = base / "River" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataError) as e:
        load_splits("eurosat", image_size=16, root=str(tmp_path), seed=0)
    message = str(e.value)
    assert message.startswith(f"{bad}: cannot decode the image (") and "\n" not in message, message
    assert message.endswith(f"image 9 of eurosat: delete {tmp_path / 'eurosat'} to download eurosat again")
    # A set kept as arrays (MNIST) whose file is cut short: a damaged file, not a failed download.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(DataError) as e:
        load_splits("mnist", image_size=32, root=str(tmp_path), seed=0)
    message = str(e.value)
    assert message.startswith(f"cannot read mnist in {tmp_path} (RuntimeError: ") and "\n" not in message, message
    assert message.endswith("its files there are damaged; delete its folder there to download mnist again")
