"""Where a run's batches come from: its splits (in memory, or streamed through Ray Data) and the
training, validation and test batches of this rank.

Kept apart from :mod:`lorsp.train`'s loop so that the loop reads as training alone; like it, this
knows nothing of Optuna or MLflow, and reaches Ray only for a streamed single run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from lorsp.config import StudyConfig
from lorsp.data import BatchIterator, ImageSplit, Splits, StreamBatches, StreamedSplits, load_splits_for


def shard(split: ImageSplit, rank: int, world: int) -> ImageSplit:
    """An exact, unpadded shard for evaluation (padding would count some images twice)."""
    if world == 1:
        return split
    return ImageSplit(images=split.images[rank::world], labels=split.labels[rank::world])


Batches = BatchIterator | StreamBatches


def run_batches(splits: Splits | StreamedSplits, study: StudyConfig, ctx: Any) -> tuple[Batches, Batches, Batches]:
    """Training, validation and test batches of either kind of splits, on this rank's device.

    train.seed owns data order and augmentation (as it owns init); data.seed only fixed the splits.
    So re-training a config with fresh train seeds varies all three on the same images. Evaluation
    sees the stored images, never augmented, whatever data.augment says.
    """
    size, bs, seed = study.data.image_size, study.data.batch_size, study.train.seed
    if isinstance(splits, StreamedSplits):
        drop_last = splits.sizes["train"] > bs * ctx.world_size
        return (
            StreamBatches(splits.train, batch_size=bs, image_size=size, device=ctx.device, augment=study.data.augment,
                          seed=seed, rank=ctx.rank, drop_last=drop_last),
            StreamBatches(splits.val, batch_size=2 * bs, image_size=size, device=ctx.device),
            StreamBatches(splits.test, batch_size=2 * bs, image_size=size, device=ctx.device),
        )
    train = BatchIterator(splits.train, batch_size=bs, image_size=size, device=ctx.device, shuffle=True,
                          augment=study.data.augment, seed=seed, rank=ctx.rank, world_size=ctx.world_size,
                          drop_last=len(splits.train) > bs * ctx.world_size)
    val = BatchIterator(shard(splits.val, ctx.rank, ctx.world_size), batch_size=2 * bs, image_size=size,
                        device=ctx.device, augment="none")
    test = BatchIterator(shard(splits.test, ctx.rank, ctx.world_size), batch_size=2 * bs, image_size=size,
                         device=ctx.device, augment="none")
    return train, val, test


def split_sizes(splits: Splits | StreamedSplits) -> tuple[int, int, int]:
    if isinstance(splits, StreamedSplits):
        return splits.sizes["train"], splits.sizes["val"], splits.sizes["test"]
    return len(splits.train), len(splits.val), len(splits.test)


@contextlib.contextmanager
def study_splits(study: StudyConfig, log: Callable[[str], None]) -> Iterator[Splits | StreamedSplits]:
    """The splits of a run without a search driver, read as a search's one-worker trial reads them.

    In memory, or, where ``data.stream`` says so (:func:`lorsp.data.mode.choose_mode`, as the search
    decides), streamed through Ray Data exactly as an inline trial streams: the same
    :class:`~lorsp.data.StreamPlan`, the window order of ``train.seed``, ``resources.stream_cpus``
    decode CPUs; so the run trains on the same batches as that trial. Ray is started for it as the
    search starts it (:func:`lorsp.ray_session.init_ray`) and shut down at the end.
    """
    from lorsp.data.mode import choose_mode

    mode = choose_mode(study.data)
    if mode.line:
        log(mode.line)
    if mode.plan is None:
        yield load_splits_for(study.data)
        return
    import ray

    from lorsp.data.stream import stream_for_run
    from lorsp.ray_session import init_ray, shutdown_ray

    started = not ray.is_initialized()
    if started:  # a local Ray in a session of its own: Ctrl-C to the terminal's group stops the run, not Ray
        init_ray(None, hint="RAY_ADDRESS names a cluster to use instead")
    try:
        with stream_for_run(mode.plan, seed=study.train.seed, cpus=study.resources.stream_cpus, log=log) as splits:
            yield splits
    finally:
        if started:
            shutdown_ray()


