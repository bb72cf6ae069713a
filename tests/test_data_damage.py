"""A damaged data file is one line naming it: in a load, in `lorsp.train` (exit 2) and in a search's trial.

The damage is made deterministic: known bytes at a known offset of a row group's data page, found
from the Parquet metadata, with the footer intact (what a bad disk block or a partial copy leaves);
an image file with bytes overwritten in its middle. Each test first checks that the damage is real
(pyarrow or PIL fails on it), then what lorsp says about it.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lorsp.config import load_study
from lorsp.data import DataError, load_splits, plan_stream
from lorsp.data.load import read_rows
from lorsp.train import main
from tests.conftest import QUICKSTART

N_IMAGES = 240
SIZE = 16
ROWS_PER_GROUP = 40
# One epoch of LoR-VP on the quickstart's ViT-Micro over generated gratings: seconds on 2 cores.
RUN = ["train.epochs=1", "data.batch_size=32", f"data.image_size={SIZE}", "prompt.method=lorvp",
       "resources.stream_cpus=1"]


def _png(image: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # Stored (uncompressed) deflate blocks: the same bytes whatever the zlib version.
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def _gratings() -> tuple[list[bytes], list[int]]:
    pool = load_splits(f"synthetic:{N_IMAGES}", image_size=SIZE, seed=7, test_fraction=0.01, val_fraction=0.01)
    images = torch.cat([pool.train.images, pool.val.images, pool.test.images])
    labels = torch.cat([pool.train.labels, pool.val.labels, pool.test.labels]).tolist()
    return [_png(img) for img in images], labels


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The gratings as a Parquet folder (2 files, row groups of 40, snappy, plain pages) and as an image folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("good")
    blobs, labels = _gratings()
    (root / "pq").mkdir()
    for k, idx in enumerate(np.array_split(np.arange(N_IMAGES), 2)):
        table = pa.table({"image": pa.array([blobs[i] for i in idx], pa.binary()),
                          "label": pa.array([labels[i] for i in idx], pa.int64())})
        pq.write_table(table, root / "pq" / f"train-{k:05d}-of-00002.parquet", row_group_size=ROWS_PER_GROUP,
                       compression="snappy", use_dictionary=False)
    for i, (blob, label) in enumerate(zip(blobs, labels)):
        folder = root / "folder" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(blob)
    return {"parquet": root / "pq", "imagefolder": root / "folder"}


def _garbage(n: int) -> bytes:
    return bytes((37 * i + 11) % 256 for i in range(n))


def damage_row_group(path: Path, group: int, column: int) -> None:
    """Overwrite known bytes in the middle of row group `group`'s data page of `column` (2,000 bytes, or a
    quarter of a smaller page), leaving every other page and the footer as they were."""
    import pyarrow.parquet as pq

    chunk = pq.ParquetFile(path).metadata.row_group(group).column(column)
    assert not chunk.has_dictionary_page  # plain pages: the column chunk is its data page
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    n = min(2000, size // 4)
    offset = start + size // 2 - n // 2
    data = bytearray(path.read_bytes())
    data[offset:offset + n] = _garbage(n)
    path.write_bytes(bytes(data))
    # The damage is real and where it was put: that row group cannot be read, the others can.
    meta = pq.ParquetFile(path)
    for g in range(meta.metadata.num_row_groups):
        if g == group:
            with pytest.raises((OSError, ValueError)):
                meta.read_row_group(g)
        else:
            meta.read_row_group(g)


@pytest.fixture
def damaged_parquet(good: dict[str, Path], tmp_path: Path) -> Path:
    """The Parquet folder with row group 2 (rows 80 to 119) of its second file damaged in its image page."""
    folder = tmp_path / "pq"
    shutil.copytree(good["parquet"], folder)
    damage_row_group(folder / "train-00001-of-00002.parquet", group=2, column=0)
    return folder


def _expected(path: Path, group: int, first: int, last: int) -> tuple[str, str]:
    """The start and the end of the one line for a damaged row group (pyarrow's reason comes between)."""
    return (f"cannot read parquet file {path}: row group {group} (rows {first} to {last}) is damaged (",
            "); download or write the file again")


def _one_line(message: str, start: str, end: str) -> None:
    assert "\n" not in message, message
    assert message.startswith(start) and message.endswith(end), message


# ---------------------------------------------------------------- no Ray: loading and decoding
@pytest.mark.parametrize("column", ["image", "label"])
def test_a_damaged_row_group_is_one_line_naming_the_file_and_rows(good: dict[str, Path], tmp_path: Path,
                                                                 column: str) -> None:
    folder = tmp_path / "pq"
    shutil.copytree(good["parquet"], folder)
    shard = folder / "train-00001-of-00002.parquet"
    damage_row_group(shard, group=1, column=0 if column == "image" else 1)
    start, end = _expected(shard, 1, 40, 79)
    with pytest.raises(DataError) as err:  # in memory: decoded once
        load_splits(f"parquet:{folder}", image_size=SIZE)
    _one_line(str(err.value), start, end)
    if column == "label":  # streamed: listing the rows reads the labels
        with pytest.raises(DataError) as err:
            plan_stream(f"parquet:{folder}", image_size=SIZE)
        _one_line(str(err.value), start, end)
        return
    plan = plan_stream(f"parquet:{folder}", image_size=SIZE)  # the labels are intact: the rows are listed
    in_shard = np.nonzero(plan.manifest.file_index == 1)[0]
    read_rows(plan.manifest, in_shard[:40])  # row group 0 of the damaged file decodes
    with pytest.raises(DataError) as err:  # what a decode task runs
        read_rows(plan.manifest, in_shard[40:45])
    _one_line(str(err.value), start, end)


def test_a_damaged_image_in_an_image_folder_is_one_line_naming_it(good: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "folder"
    shutil.copytree(good["imagefolder"], folder)
    bad = sorted((folder / "class_3").iterdir())[2]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2:len(data) // 2 + 200] = _garbage(200)  # inside its pixel data (IDAT)
    bad.write_bytes(bytes(data))
    with pytest.raises(OSError), Image.open(bad) as img:
        img.load()
    with pytest.raises(DataError) as err:
        load_splits(f"imagefolder:{folder}", image_size=SIZE)
    message = str(err.value)
    assert message.startswith(f"{bad}: cannot decode the image (") and "\n" not in message, message
    assert message.endswith("; fix or delete that file")
    plan = plan_stream(f"imagefolder:{folder}", image_size=SIZE)
    row = plan.manifest.files.index(str(bad))
    with pytest.raises(DataError) as streamed:
        read_rows(plan.manifest, np.array([row]))
    assert str(streamed.value) == message


# ---------------------------------------------------------------- lorsp.train: exit 2, one line
def _train(capsys: pytest.CaptureFixture, tmp_path: Path, dataset: str, *extra: str) -> tuple[int, str]:
    args = ["--config", str(QUICKSTART), "--out", str(tmp_path / "run"), "--quiet"]
    for kv in (*RUN, f"data.dataset={dataset}", *extra):
        args += ["--set", kv]
    code = main(args)
    return code, capsys.readouterr().err


def test_lorsp_train_names_a_damaged_shard_in_one_line(damaged_parquet: Path, tmp_path: Path, capsys) -> None:
    code, err = _train(capsys, tmp_path, f"parquet:{damaged_parquet}", "data.stream=false")
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    (line,) = err.splitlines()
    start, end = _expected(damaged_parquet / "train-00001-of-00002.parquet", 2, 80, 119)
    _one_line(line, "error: " + start, end)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parquet", "imagefolder"])
def test_lorsp_train_streaming_names_a_damaged_file_in_one_line(good: dict[str, Path], damaged_parquet: Path,
                                                                tmp_path: Path, capsys, kind: str) -> None:
    """Decoded in Ray Data tasks: the error comes back through Ray and is still the one line."""
    if kind == "parquet":
        dataset, shard = f"parquet:{damaged_parquet}", damaged_parquet / "train-00001-of-00002.parquet"
        start, end = _expected(shard, 2, 80, 119)
    else:
        folder = tmp_path / "folder"
        shutil.copytree(good["imagefolder"], folder)
        bad = sorted((folder / "class_5").iterdir())[0]
        bad.write_bytes(bad.read_bytes()[:300])  # truncated inside its pixel data
        dataset, start, end = f"imagefolder:{folder}", f"{bad}: cannot decode the image (", "; fix or delete that file"
    code, err = _train(capsys, tmp_path, dataset, "data.stream=true")
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len([line for line in lines if line.startswith("error: ")]) == 1, err[-3000:]
    _one_line(lines[-1], "error: " + start, end)


# ---------------------------------------------------------------- a search's trial: FAIL once, not retried
@pytest.mark.slow
def test_a_streamed_trial_fails_once_naming_the_damaged_shard(damaged_parquet: Path, tmp_path: Path, local_ray,
                                                              capsys) -> None:
    import mlflow
    import ray.tune

    from lorsp.tracking import tracking_uri
    from lorsp.tracking.callback import tune_callbacks
    from lorsp.tune import run_study

    study = load_study(QUICKSTART, [*RUN, f"data.dataset=parquet:{damaged_parquet}", "data.stream=true",
                                    "search.num_samples=1", "search.max_concurrent=1",
                                    f"tracking.root={tmp_path / 'runs'}", "name=damaged"])
    recovered: list[str] = []

    class Recoveries(ray.tune.Callback):
        def on_trial_recover(self, iteration, trials, trial, **info):
            recovered.append(trial.trial_id)

    (record,) = run_study(study, callbacks=[*tune_callbacks(study), Recoveries()]).records
    shard = damaged_parquet / "train-00001-of-00002.parquet"
    start, end = _expected(shard, 2, 80, 119)
    assert record.state == "FAIL" and not recovered  # a damaged file is not retried
    _one_line(record.error, "DataError: " + start, end)
    out = capsys.readouterr()
    (line,) = [line for line in out.out.splitlines() if " failed: " in line]
    assert f"failed: DataError: {start}" in line and line.endswith(end)
    assert "Traceback" not in out.out + out.err
    assert "An exception was raised from a task" not in out.out + out.err  # Ray Data's own lines about it
    client = mlflow.MlflowClient(tracking_uri(study))
    (run,) = client.search_runs([client.get_experiment_by_name("damaged").experiment_id],
                                "tags.`lorsp.role` = 'trial'")
    assert run.info.status == "FAILED"
    _one_line(run.data.tags["error"], "DataError: " + start, end)
    traceback_file = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    recorded = Path(traceback_file).read_text()
    assert "Traceback" in recorded and str(shard) in recorded


# ---------------------------------------------------------------- a DataError that Ray carried
def test_a_data_error_wrapped_by_ray_is_a_failure_reported_once_not_a_retry() -> None:
    """A decode task's DataError reaches the trial inside Ray's RayTaskError (a RayError, which the
    trial would otherwise re-raise for Tune to retry): it is reported as the one line it is."""
    from ray.exceptions import RayError, RayTaskError

    from lorsp.errors import data_error_in
    from lorsp.outcome import ERROR_KEY, FAILED_KEY, TRACEBACK_KEY
    from lorsp.trial import _guarded

    line = "cannot read parquet file /d/x.parquet: row group 2 (rows 80 to 119) is damaged (Corrupt); download it"

    def task_error(cause: BaseException) -> BaseException:
        try:
            raise cause
        except BaseException as err:
            import traceback

            text = traceback.format_exc()
            return RayTaskError("MapBatches(_decode)", text, err).as_instanceof_cause()

    wrapped = task_error(DataError(line))
    assert isinstance(wrapped, RayError) and isinstance(wrapped, DataError) and "\n" in str(wrapped)
    assert str(data_error_in(wrapped)) == line

    def fail(err: BaseException):
        def run() -> None:
            raise err
        return run

    reported: list[dict] = []
    _guarded(fail(wrapped), reported.append)
    (result,) = reported
    assert result[FAILED_KEY] == 1.0 and result[ERROR_KEY] == f"DataError: {line}"
    assert result[TRACEBACK_KEY].startswith("Traceback") and line in result[TRACEBACK_KEY]
    # A Ray error of another cause (a lost worker, a failed object fetch) is still raised for Tune to retry.
    with pytest.raises(RayError):
        _guarded(fail(task_error(OSError("connection reset"))), reported.append)
    assert len(reported) == 1
