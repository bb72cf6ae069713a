"""A :class:`~lorsp.data.manifest.StreamPlan` through Ray Data: decode in Ray tasks, uint8 batches out.

The one module of :mod:`lorsp.data` that imports Ray; only the trial runtime (:mod:`lorsp.trial`),
a single run that streams (:mod:`lorsp.train`, when it must), the benchmarks and the tests import
it, so the rest of the package, the training loop and the GPU checks run where Ray is not installed.

How a split is read: its rows are cut into *windows* (:mod:`lorsp.data.order`); each window is one
row of a tiny ``from_items`` dataset, and one ``map_batches`` task per window decodes and resizes
its images (:func:`~lorsp.data.load.read_rows`, on one CPU) into a block of uint8 images,
labels and keys (the row's position in its split). The trial iterates the result in batches.

* An **inline trial** builds one dataset per epoch from that epoch's windows, with
  ``preserve_order``, so its training order is exactly :func:`~lorsp.data.order.train_windows`'s
  (a function of ``train.seed`` and the epoch, the same after a resume), and validation and test
  read in a fixed order (:class:`EpochStream`).
* A **Ray Train trial** hands :func:`train_dataset` to its ``TorchTrainer``; each worker reads its
  shard with ``ray.train.get_dataset_shard`` (Ray's ``streaming_split``: disjoint shards of equal
  length, so DDP ranks step together). Ray re-executes the dataset every epoch with the window
  order reseeded from ``train.seed`` and the epoch count, and which rank reads which window is Ray's
  choice at run time, so a streamed DDP run is seeded but not bit-reproducible (:class:`ShardStream`).
  Its validation and test are read per rank in a fixed order, as inline (every image once).

Where decoding runs: a streaming trial reserves ``resources.stream_cpus`` CPUs as the last bundle of
its own placement group, and its decode tasks are placed there (:class:`DecodePlacement`), at most
that many at a time. So decode never takes a neighbouring trial's CPUs, a trial's CPU budget is
what Tune admits it with, and the node is never oversubscribed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lorsp.data.containers import ImageSplit
from lorsp.data.load import read_rows
from lorsp.data.manifest import Manifest, StreamPlan
from lorsp.data.order import eval_windows, train_windows, window_rows
from lorsp.data.seeding import STREAM_ORDER, mix
from lorsp.data.streamed import StreamedSplits, UInt8Batch
from lorsp.errors import data_error_in

__all__ = [
    "DecodePlacement",
    "EpochStream",
    "ShardStream",
    "open_inline",
    "open_worker",
    "quiet_ray_data",
    "ray_train_datasets",
    "stream_for_run",
    "train_dataset",
]

#: Decoded batches kept ready ahead of the training step.
PREFETCH_BATCHES = 2
#: Object-store budget of one trial's pipeline, in windows (decoded, queued or being consumed).
_BUFFER_WINDOWS = 4
_MIN_BUFFER_BYTES = 64 * 2**20


class _UserCodeErrorLines(logging.Filter):
    """Drops Ray Data's own lines about an exception in a decode task (``_decode``, user code to Ray).

    The exception itself still reaches the process that iterates the dataset, which reports it:
    a damaged file as the one line naming it, anything else with its traceback. Ray Data's errors
    about its own internals (logged with their traceback) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Exception occurred in user code"):
            return False
        return not (message.startswith("An exception was raised from a task of operator") and not record.exc_info)


_USER_CODE_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


def quiet_ray_data() -> None:
    """No progress bars or per-dataset log lines from a trial: a study's console is one line a trial."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    for name in _USER_CODE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UserCodeErrorLines) for f in logger.filters):
            logger.addFilter(_UserCodeErrorLines())


@dataclass(frozen=True)
class DecodePlacement:
    """Where a trial's decode tasks run: ``cpus`` at a time, in ``bundle`` of ``placement_group``.

    Without a placement group (a script or test driving Ray directly) the tasks go wherever Ray has
    a free CPU, still at most ``cpus`` at a time.
    """

    cpus: float
    placement_group: Any | None = None
    bundle: int = -1

    @classmethod
    def current(cls, cpus: float) -> DecodePlacement:
        """This trial's placement: its placement group's last bundle (the one reserved for decoding)."""
        import ray

        pg = ray.util.get_current_placement_group()
        if pg is None or len(pg.bundle_specs) < 2:
            return cls(cpus)
        return cls(cpus, pg, len(pg.bundle_specs) - 1)

    def remote_args(self) -> dict[str, Any]:
        if self.placement_group is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.placement_group, self.bundle)}


def _decode(batch: dict[str, np.ndarray], manifest: Manifest) -> dict[str, np.ndarray]:
    """One window (one input row) -> its decoded images, labels and keys, in the window's order."""
    rows = np.asarray(batch["rows"][0], dtype=np.int64)
    return {"image": read_rows(manifest, rows), "label": manifest.labels[rows],
            "key": np.asarray(batch["keys"][0], dtype=np.int64)}


def windows_dataset(plan_rows: np.ndarray, manifest: Manifest, windows: list[np.ndarray],
                    placement: DecodePlacement, *, ordered: bool, reorder: Any | None = None) -> Any:
    """A Ray Dataset that decodes ``windows`` (positions in the split whose rows are ``plan_rows``).

    ``reorder`` (a ``RandomSeedConfig``) shuffles the windows before decoding, on every execution:
    done on the tiny window rows, since reordering decoded blocks would hold the whole set first.
    """
    import ray.data
    from ray.data import ExecutionResources

    items = [{"rows": plan_rows[w].tolist(), "keys": w.tolist()} for w in windows]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    if reorder is not None:
        ds = ds.randomize_block_order(seed=reorder)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing a scheduling strategy to map_batches (removal planned for 2.64,
        # pyproject pins 2.60.0); it is the only way to keep a trial's decoding inside its own
        # placement group. Revisit with the Ray upgrade.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(_decode, fn_kwargs={"manifest": manifest}, batch_size=1, num_cpus=1,
                            **placement.remote_args())
    options = ds.context.execution_options
    options.preserve_order = ordered
    window_bytes = max(len(w) for w in windows) * manifest.bytes_per_image if windows else 0
    budget = max(_MIN_BUFFER_BYTES, _BUFFER_WINDOWS * (placement.cpus + 1) * window_bytes)
    options.resource_limits = ExecutionResources(cpu=placement.cpus, object_store_memory=budget)
    return ds


def _batches(iterator: Iterator[dict[str, np.ndarray]]) -> Iterator[UInt8Batch]:
    """The pipeline's batches; a bad image in a decode task comes out as the one-line DataError it raised.

    Ray wraps a task's exception in its own, keeping only the traceback text: the line is read
    back from there, so a trial fails once with the file and row to fix instead of being retried.
    """
    try:
        for b in iterator:
            yield b["image"], b["label"], b["key"]
    except Exception as err:
        found = data_error_in(err)
        if found is not None and found is not err:
            raise found from err  # the Ray error, with the task's traceback, stays on record
        raise


class EpochStream:
    """A split the trial reads itself: one Ray Dataset per epoch, from ``windows(epoch)``, in order."""

    def __init__(self, plan_rows: np.ndarray, manifest: Manifest, windows: Callable[[int], list[np.ndarray]],
                 placement: DecodePlacement) -> None:
        self.plan_rows = plan_rows
        self.manifest = manifest
        self.windows = windows
        self.placement = placement
        self.num_rows = int(sum(len(w) for w in windows(0)))

    def batches(self, epoch: int, batch_size: int, drop_last: bool) -> Iterator[UInt8Batch]:
        ds = windows_dataset(self.plan_rows, self.manifest, self.windows(epoch), self.placement, ordered=True)
        yield from _batches(ds.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=drop_last,
                                            prefetch_batches=PREFETCH_BATCHES))


class ShardStream:
    """A Ray Train worker's training shard (``ray.train.get_dataset_shard``) as a :class:`UInt8Stream`.

    A local shuffle buffer of one window mixes neighbouring windows, so a batch's rows change from
    epoch to epoch as Ray's window order does.
    """

    def __init__(self, shard: Any, num_rows: int, shuffle_rows: int, seed: int) -> None:
        self.shard = shard
        self.num_rows = num_rows
        self.shuffle_rows = shuffle_rows
        self.seed = seed

    def batches(self, epoch: int, batch_size: int, drop_last: bool) -> Iterator[UInt8Batch]:
        yield from _batches(self.shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", drop_last=drop_last, prefetch_batches=PREFETCH_BATCHES,
            local_shuffle_buffer_size=self.shuffle_rows, local_shuffle_seed=mix(self.seed, STREAM_ORDER, epoch)))


def _eval_stream(plan: StreamPlan, rows: np.ndarray, placement: DecodePlacement, rank: int,
                 world_size: int) -> EpochStream:
    windows = eval_windows(rows, plan.manifest, rank=rank, world_size=world_size, size=plan.window)
    return EpochStream(rows, plan.manifest, lambda epoch: windows, placement)


def _gallery_split(plan: StreamPlan) -> ImageSplit:
    """The validation images a prompt gallery shows, decoded here (a handful): the same rows that
    an in-memory run's gallery picks, so streamed and in-memory trials show the same pictures."""
    import torch

    from lorsp.gallery import gallery_indices

    labels = plan.manifest.labels[plan.val]
    rows = plan.val[gallery_indices(torch.from_numpy(labels))]
    return ImageSplit(torch.from_numpy(read_rows(plan.manifest, rows)), torch.from_numpy(plan.manifest.labels[rows]))


def _splits(plan: StreamPlan, train: Any, placement: DecodePlacement, rank: int, world_size: int) -> StreamedSplits:
    return StreamedSplits(
        train=train,
        val=_eval_stream(plan, plan.val, placement, rank, world_size),
        test=_eval_stream(plan, plan.test, placement, rank, world_size),
        num_classes=plan.num_classes, class_names=list(plan.class_names), source=plan.source,
        sizes={"train": len(plan.train), "val": len(plan.val), "test": len(plan.test)},
        gallery=_gallery_split(plan) if rank == 0 else None,
    )


def open_inline(plan: StreamPlan, *, seed: int, placement: DecodePlacement) -> StreamedSplits:
    """The splits of a trial that iterates its datasets itself (one process, world size 1)."""
    def windows(epoch: int) -> list[np.ndarray]:
        return train_windows(plan.train, plan.manifest, seed=seed, epoch=epoch, size=plan.window)

    train = EpochStream(plan.train, plan.manifest, windows, placement)
    return _splits(plan, train, placement, 0, 1)


@contextlib.contextmanager
def stream_for_run(plan: StreamPlan, *, seed: int, cpus: float,
                   log: Callable[[str], None] = print) -> Iterator[StreamedSplits]:
    """The splits of a run without a search driver (``python -m lorsp.train``), streamed as an inline
    trial streams them (:func:`open_inline`: the same windows, from ``seed``), decoding on ``cpus`` CPUs.

    Ray is started for the run and shut down when it ends: the cluster of ``RAY_ADDRESS`` (as set
    under ``ray job submit``), else an embedded local Ray ("local": never a stray ``ray start``
    cluster on this machine). A Ray this process already runs is used and left running. Only Ray
    Data runs on it, so none of a search's Ray setup (:func:`lorsp.ray_session.init_ray`) is needed.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        address = os.environ.get("RAY_ADDRESS")
        log(f"data: Ray Data on the Ray cluster at {address}" if address else
            "data: starting an embedded local Ray for Ray Data (RAY_ADDRESS names a cluster to use instead)")
        # A local Ray makes its own auth token; its notice about token authentication is not news here.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        ray.init(address=address or "local", logging_level="WARNING", log_to_driver=True)
    try:
        quiet_ray_data()
        yield open_inline(plan, seed=seed, placement=DecodePlacement(cpus))
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def train_dataset(plan: StreamPlan, *, seed: int, placement: DecodePlacement) -> Any:
    """The training dataset a Ray Train trial hands its ``TorchTrainer`` (``datasets={"train": ...}``).

    Its windows are those of epoch 0; Ray reorders them every execution (epoch), reseeded from
    ``train.seed`` (``RandomSeedConfig(reseed_after_execution=True)``).
    """
    from ray.data import RandomSeedConfig

    windows = train_windows(plan.train, plan.manifest, seed=seed, epoch=0, size=plan.window)
    reorder = RandomSeedConfig(seed=mix(seed, STREAM_ORDER) % 2**32, reseed_after_execution=True)
    return windows_dataset(plan.train, plan.manifest, windows, placement, ordered=False, reorder=reorder)


def ray_train_datasets(plan: StreamPlan, *, seed: int, placement: DecodePlacement) -> tuple[dict[str, Any], Any]:
    """``datasets`` and ``dataset_config`` for a streaming trial's ``TorchTrainer``: the training set is
    split among the workers (``get_dataset_shard("train")``), decoding within ``placement``'s CPUs.

    The execution options are given to Ray Train explicitly: it replaces a dataset's own with these
    when it splits it.
    """
    import ray.train
    from ray.data import ExecutionOptions

    train = train_dataset(plan, seed=seed, placement=placement)
    options = ExecutionOptions(resource_limits=train.context.execution_options.resource_limits)
    return {"train": train}, ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)


def open_worker(plan: StreamPlan, shard: Any, *, seed: int, rank: int, world_size: int,
                placement: DecodePlacement) -> StreamedSplits:
    """The splits of Ray Train worker ``rank``: its ``get_dataset_shard`` for training, its slice of the rest.

    ``streaming_split(equal=True)`` gives every rank ``len(train) // world_size`` rows an epoch.
    """
    train = ShardStream(shard, len(plan.train) // world_size, window_rows(plan.manifest, plan.window), seed)
    return _splits(plan, train, placement, rank, world_size)
