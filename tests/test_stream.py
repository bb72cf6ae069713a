"""Streaming (`data.stream`): the same splits as in memory, real Ray Data pipelines, real trials.

The data are lorsp's generated gratings written once as a real Parquet folder (several files and row
groups) and a real image folder of PNGs; the Ray tests start a real local Ray. The in-memory path is
the reference every streamed result is held against.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lorsp.config import load_study
from lorsp.data import BatchIterator, DataError, load_splits, load_splits_for, plan_stream, plan_stream_for
from lorsp.data.load import read_rows
from lorsp.data.mode import choose_mode
from lorsp.data.order import eval_windows, train_windows
from lorsp.train import main, train_loop
from tests.conftest import QUICKSTART

N_IMAGES = 480
SIZE = 16
# The quickstart's grating-pretrained ViT-Micro on generated gratings: learns in two short epochs.
RUN = ["train.epochs=2", "data.batch_size=32", f"data.image_size={SIZE}", "prompt.method=lorvp", "train.lr=0.05",
       "data.val_fraction=0.2", "data.test_fraction=0.2", "data.seed=1"]


def _png(image: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same N_IMAGES gratings as `parquet:` (3 files, row groups of 40) and as `imagefolder:`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("sets")
    pool = load_splits(f"synthetic:{N_IMAGES}", image_size=SIZE, seed=7, test_fraction=0.01, val_fraction=0.01)
    images = torch.cat([pool.train.images, pool.val.images, pool.test.images])
    labels = torch.cat([pool.train.labels, pool.val.labels, pool.test.labels]).tolist()
    blobs = [_png(img) for img in images]
    (root / "pq").mkdir()
    for k, idx in enumerate(np.array_split(np.arange(N_IMAGES), 3)):
        table = pa.table({"image": pa.array([blobs[i] for i in idx], pa.binary()),
                          "label": pa.array([labels[i] for i in idx], pa.int64())})
        pq.write_table(table, root / "pq" / f"train-{k:05d}-of-00003.parquet", row_group_size=40)
    for i, (blob, label) in enumerate(zip(blobs, labels)):
        folder = root / "folder" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(blob)
    return {"parquet": f"parquet:{root / 'pq'}", "imagefolder": f"imagefolder:{root / 'folder'}"}


def _study(dataset: str, *extra: str):
    return load_study(QUICKSTART, [*RUN, f"data.dataset={dataset}", *extra]).resolved()


# ---------------------------------------------------------------- no Ray: the protocol on indices
@pytest.mark.parametrize("kind", ["parquet", "imagefolder"])
@pytest.mark.parametrize("max_train", [None, 150])
def test_a_stream_plan_holds_the_in_memory_splits_row_for_row(sets: dict[str, str], kind: str,
                                                              max_train: int | None) -> None:
    kw = dict(image_size=SIZE, seed=3, val_fraction=0.15, test_fraction=0.25, max_train=max_train)
    memory = load_splits(sets[kind], **kw)
    plan = plan_stream(sets[kind], **kw)
    for name in ("train", "val", "test"):
        split, rows = getattr(memory, name), getattr(plan, name)
        assert np.array_equal(read_rows(plan.manifest, rows), split.images.numpy()), name
        assert np.array_equal(plan.manifest.labels[rows], split.labels.numpy()), name
    assert plan.num_classes == memory.num_classes and plan.class_names == memory.class_names
    assert plan.source == memory.source


def test_imagefolder_trains_in_the_in_memory_batch_order(sets: dict[str, str]) -> None:
    plan = dataclasses.replace(plan_stream(sets["imagefolder"], image_size=SIZE, seed=1), window=50)
    it = BatchIterator(load_splits(sets["imagefolder"], image_size=SIZE, seed=1).train, batch_size=8,
                       image_size=SIZE, shuffle=True, seed=4)
    for epoch in (0, 3):
        it.set_epoch(epoch)
        windows = train_windows(plan.train, plan.manifest, seed=4, epoch=epoch, size=plan.window)
        assert np.array_equal(np.concatenate(windows), it.shard_indices().numpy())


def test_parquet_epochs_are_seeded_permutations_read_a_row_group_at_a_time(sets: dict[str, str]) -> None:
    plan = plan_stream(sets["parquet"], image_size=SIZE, seed=1)
    n = len(plan.train)

    def order(seed: int, epoch: int) -> list[np.ndarray]:
        return train_windows(plan.train, plan.manifest, seed=seed, epoch=epoch, size=64)

    for windows in (order(0, 0), order(0, 1), order(5, 0)):
        assert sorted(np.concatenate(windows).tolist()) == list(range(n))  # every row once
        groups = [plan.manifest.chunk_of(plan.train[w]) for w in windows]
        read = np.concatenate([np.unique(g) for g in groups])
        assert len(read) == len(np.unique(read))  # each row group in one window: read once an epoch
    assert all(np.array_equal(a, b) for a, b in zip(order(0, 1), order(0, 1)))
    assert not np.array_equal(np.concatenate(order(0, 0)), np.concatenate(order(0, 1)))
    assert not np.array_equal(np.concatenate(order(0, 0)), np.concatenate(order(5, 0)))


def test_evaluation_ranks_read_every_row_once_in_order(sets: dict[str, str]) -> None:
    plan = plan_stream(sets["parquet"], image_size=SIZE, seed=1)
    shards = [np.concatenate(eval_windows(plan.val, plan.manifest, rank=r, world_size=3, size=7)) for r in range(3)]
    assert np.concatenate(shards).tolist() == list(range(len(plan.val)))


def test_auto_streams_above_the_threshold_and_says_so_in_one_line(sets: dict[str, str]) -> None:
    study = _study(sets["parquet"])
    decoded = (N_IMAGES * 3 * SIZE * SIZE)
    small = choose_mode(study.data.model_copy(update={"stream_threshold": 0.01}), memory=50 * decoded)
    assert small.stream and small.plan is not None and "\n" not in small.line
    assert small.line.startswith("data: streaming through Ray Data: decoded it would take 368.6 kB, over "
                                 "data.stream_threshold 0.01")
    roomy = choose_mode(study.data, memory=50 * decoded)
    assert not roomy.stream and roomy.line.startswith("data: in memory:") and "within" in roomy.line
    assert choose_mode(study.data.model_copy(update={"stream": False}), memory=1).line == ""
    assert not choose_mode(_study("digits").data, memory=1).stream  # only parquet/imagefolder stream
    with pytest.raises(DataError, match="data.stream: true needs a parquet:PATH or imagefolder:PATH"):
        choose_mode(_study("digits", "data.stream=true").data)


@pytest.mark.slow
def test_a_single_run_streams_and_trains_on_the_in_memory_batches(sets: dict[str, str], tmp_path: Path,
                                                                 capsys) -> None:
    """`python -m lorsp.train` streams what a search would stream, starting Ray for Ray Data itself.

    An image folder streams in the in-memory order (the same batches), so the streamed run is the
    in-memory run, to the last bit. A Ray the run started is shut down; one already running is left.
    """
    import json

    import ray


    running = ray.is_initialized()
    final: dict[str, dict] = {}
    for stream in ("false", "true"):
        out = tmp_path / f"stream-{stream}"
        args = ["--config", str(QUICKSTART), "--out", str(out)]
        for kv in (*RUN, f"data.dataset={sets['imagefolder']}", f"data.stream={stream}", "resources.stream_cpus=1"):
            args += ["--set", kv]
        code = main(args)
        printed = capsys.readouterr()
        assert code == 0, printed.err[-3000:]
        final[stream] = json.loads((out / "metrics.json").read_text())["final"]
    assert "data: streaming through Ray Data (data.stream: true" in printed.out
    assert "epoch 2/2" in printed.out
    assert ray.is_initialized() == running
    for key in ("loss", "train_acc", "val_acc", "test_acc"):
        assert final["true"][key] == final["false"][key], key
    assert final["true"]["val_acc"] > 0.3  # it learned (chance is 0.1)


# ---------------------------------------------------------------- real Ray Data pipelines
@pytest.fixture(scope="module")
def ray_data(local_ray):
    """The session's Ray (4 logical CPUs: a 2-worker trial plus its decode bundle), Ray Data quiet."""
    from lorsp.data.stream import quiet_ray_data

    quiet_ray_data()


def _inline(study, window: int = 64):
    from lorsp.data.stream import DecodePlacement, open_inline

    plan = dataclasses.replace(plan_stream_for(study.data), window=window)
    return open_inline(plan, seed=study.train.seed, placement=DecodePlacement(cpus=1))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parquet", "imagefolder"])
def test_streamed_training_matches_the_in_memory_run(sets: dict[str, str], kind: str, ray_data) -> None:
    study = _study(sets[kind])
    memory = load_splits_for(study.data)
    streamed = _inline(study)
    for name in ("val", "test"):  # delivered through Ray Data: the in-memory images, in the in-memory order
        batches = list(getattr(streamed, name).batches(0, 50, False))
        assert np.array_equal(np.concatenate([b[0] for b in batches]), getattr(memory, name).images.numpy())
        assert np.concatenate([b[2] for b in batches]).tolist() == list(range(len(getattr(memory, name))))
    # The prompt gallery shows the same validation images as an in-memory run's.
    from lorsp.gallery import gallery_indices

    shown = gallery_indices(memory.val.labels)
    assert torch.equal(streamed.gallery.images, memory.val.images[shown])
    a = train_loop(study, splits=memory, verbose=False)
    b = train_loop(study, splits=streamed, verbose=False)
    n_val = len(memory.val)
    if kind == "imagefolder":
        # Files are read in BatchIterator's own order: the very same batches, the very same run.
        assert (b["loss"], b["val_acc"], b["test_acc"]) == (a["loss"], a["val_acc"], a["test_acc"])
    noise = 3 * math.sqrt(2 * 0.25 / n_val)  # 3 sd of the difference of two accuracies on n_val images
    assert abs(a["val_acc"] - b["val_acc"]) <= noise, (a["val_acc"], b["val_acc"], noise)
    assert min(a["val_acc"], b["val_acc"]) > 0.3  # well above chance (0.1): both runs learned


@pytest.mark.slow
def test_a_streamed_run_resumes_after_its_checkpoint_epoch(sets: dict[str, str], ray_data, tmp_path: Path) -> None:
    study = _study(sets["parquet"], "train.epochs=3")
    saved: dict[int, Path] = {}

    def keep(metrics: dict[str, float], folder: str | None) -> None:
        if folder:
            dest = tmp_path / f"epoch{int(metrics['epoch'])}"
            dest.mkdir()
            for f in Path(folder).iterdir():
                dest.joinpath(f.name).write_bytes(f.read_bytes())
            saved[int(metrics["epoch"])] = dest

    full = train_loop(study, keep, splits=_inline(study), verbose=False)
    epochs: list[float] = []
    resumed = train_loop(study, lambda m, f: epochs.append(m["epoch"]), splits=_inline(study),
                         resume_from=saved[1], verbose=False)
    assert epochs == [2.0, 3.0]
    # Each epoch's order is a function of (train.seed, epoch): the resumed run is the uninterrupted one.
    assert (resumed["loss"], resumed["val_acc"]) == (full["loss"], full["val_acc"])


@pytest.mark.slow
def test_a_bad_image_fails_the_run_in_one_line(tmp_path: Path, ray_data) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = [_png(torch.full((3, 8, 8), 40 * c, dtype=torch.uint8)) for c in range(3)]
    blobs = [good[i % 3] for i in range(60)]
    blobs[37] = b"<html>not found</html>"
    (tmp_path / "bad").mkdir()
    f = tmp_path / "bad" / "train.parquet"
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array([i % 3 for i in range(60)])}), f)
    study = _study(f"parquet:{tmp_path / 'bad'}", "train.epochs=1")
    with pytest.raises(DataError) as err:
        train_loop(study, splits=_inline(study, window=16), verbose=False)
    assert str(err.value).startswith(f"parquet:{f} row 37: cannot decode the image (not a format PIL can read")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- through the search driver
@pytest.mark.slow
def test_a_study_streams_when_auto_finds_the_set_too_big(sets: dict[str, str], ray_data, tmp_path: Path) -> None:
    from lorsp.tune import run_study

    study = load_study(QUICKSTART, [*RUN, f"data.dataset={sets['parquet']}", "data.stream_threshold=1.0e-9",
                                    "resources.stream_cpus=1", "train.epochs=1", "search.num_samples=1",
                                    "search.max_concurrent=1", f"tracking.root={tmp_path / 'runs'}", "name=auto"])
    lines: list[str] = []
    (record,) = run_study(study, log=lines.append).records
    streaming = [line for line in lines if line.startswith("data: streaming through Ray Data")]
    assert len(streaming) == 1 and "over data.stream_threshold 1e-09" in streaming[0], lines
    assert record.state == "COMPLETE", record.error
    assert 0.0 <= record.values["val_acc"] <= 1.0


@pytest.mark.slow
def test_two_ray_train_workers_stream_disjoint_shards(sets: dict[str, str], ray_data, tmp_path: Path) -> None:
    import ray.tune

    from lorsp.tune import run_study

    study = load_study(QUICKSTART, [*RUN, f"data.dataset={sets['imagefolder']}", "data.stream=true",
                                    "resources.workers_per_trial=2", "resources.cpus_per_worker=1",
                                    "resources.stream_cpus=1", "search.num_samples=1", "search.max_concurrent=1",
                                    f"tracking.root={tmp_path / 'runs'}", "name=ddp-stream"])
    results: list[dict] = []

    class Keep(ray.tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            results.append(dict(result))

    (record,) = run_study(study, callbacks=[Keep()]).records
    assert record.state == "COMPLETE", record.error
    n_train = len(plan_stream_for(study.data).train)
    assert [r["epoch"] for r in results] == [1, 2]
    for result in results:
        assert result["shard_overlap"] == 0  # no training row was read by both workers
        # Each worker gets half the rows (Ray's equal split drops at most one) and trains on its full
        # batches of 32 (drop_last, as in memory).
        assert result["shard_rows"] == 2 * (n_train // 2 // 32 * 32)
        assert result["shard_digest_0"] != result["shard_digest_1"]
