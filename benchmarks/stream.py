"""In memory against streamed through Ray Data, side by side, on generated Parquet sets of two sizes.

    python benchmarks/stream.py                                   # 10k and 40k JPEGs at 64 px
    python benchmarks/stream.py --sizes 10000,40000 --stream-cpus 1 --json out.json

For each size a Parquet folder of class-coloured noise JPEGs is written once (``--root``; files of
5000 rows, row groups of 1000, as Hugging Face writes them) and both data paths are measured the way
``lorsp.tune`` runs them:

* **driver prep**: in memory, ``load_splits_for`` (decode everything once on the driver); streamed,
  ``plan_stream_for`` (labels and row groups only). Then ``ray.put``.
* in a **fresh trial process** (a Ray actor in a placement group shaped like a streaming trial's:
  one CPU for the trial, ``--stream-cpus`` for its decode tasks), for each mode in turn:
  *time to first batch* (``ray.get`` of the shared data, iterator set-up and the first batch of 64
  float images on the trial's device; in the new process, then again at the next epoch),
  *images/s delivered* (that next epoch through the iterator, uint8 -> float, no model), *epoch
  time* of a small training run (``train_loop``, one epoch: LoR-VP on a random-init ViT-Micro with
  8 px patches at 64 px, batch 64, validation included) and the trial process's *peak RSS*
  (sampled ``VmRSS``, what ``getrusage`` reports; it includes the ~0.65 GB every trial process has:
  Ray's worker, torch, timm) and the private part of it (``RssAnon``): the rest is libraries and
  the pages of Ray's shared object store the process has read (zero-copy), which the node's object
  store owns and caps, whichever trial reads them.

Plus a decode probe: ImageNet-like JPEGs (500x375) decoded and resized to 224 px by
``read_rows`` on one CPU, the cost each streamed image pays per epoch at ViT-B/16's input size.

Figures are one run on whatever machine this is; on a shared machine absolute times move with the
load (printed), so compare the columns of one table.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import _util as U  # noqa: E402

BATCH = 64
ROWS_PER_FILE = 5000
ROW_GROUP = 1000
CLASSES = 10


def write_set(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` JPEGs of ``size`` px (class colour + noise) as Parquet files; reused when already there."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    done = folder / "COMPLETE"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (CLASSES, 3))
    for k, start in enumerate(range(0, n, ROWS_PER_FILE)):
        rows = range(start, min(n, start + ROWS_PER_FILE))
        labels = rng.integers(0, CLASSES, len(rows))
        blobs = []
        for label in labels:
            img = np.clip(colours[label] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            blobs.append(buf.getvalue())
        table = pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array(labels, pa.int64())})
        pq.write_table(table, folder / f"train-{k:05d}.parquet", row_group_size=ROW_GROUP)
    done.write_text("ok\n")
    return folder


def study_for(dataset: str, size: int, stream: bool, stream_cpus: float) -> Any:
    from lorsp.config import StudyConfig

    return StudyConfig.model_validate(dict(
        name="bench-stream",
        backbone=dict(model="vit_micro_patch4_16", pretrained=False, kwargs={"patch_size": 8}),
        data=dict(dataset=dataset, image_size=size, batch_size=BATCH, stream=stream, val_fraction=0.05,
                  test_fraction=0.05),
        prompt=dict(method="lorvp", rank=4),
        train=dict(epochs=1, optimizer="sgd", lr=0.01, threads=1, amp=False),
        resources=dict(cpus_per_worker=1, stream_cpus=stream_cpus),
    ))


class MemorySampler:
    """Peaks of this process's resident memory, sampled every 20 ms from /proc/self/status (MiB).

    ``VmRSS`` is what ``getrusage`` reports; it splits into private memory (``RssAnon``), mapped
    files (``RssFile``: libraries) and shared memory (``RssShmem``: pages of Ray's object store this
    process has read, zero-copy; they belong to the node's object store, whose size Ray caps).
    """

    FIELDS = ("VmRSS", "RssAnon", "RssShmem")

    def __init__(self) -> None:
        import threading

        self.peak = dict.fromkeys(self.FIELDS, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def now(cls) -> dict[str, float]:
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in cls.FIELDS:
                    out[key] = int(value.split()[0]) / 1024
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for key, value in self.now().items():
                self.peak[key] = max(self.peak[key], value)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peak


class TrialProcess:
    """One measurement in a fresh process, placed as a trial: its own CPU plus its decode bundle."""

    def measure(self, study_json: str, data: list[Any]) -> dict[str, float]:
        import ray
        import torch

        from lorsp.config import StudyConfig
        from lorsp.data import BatchIterator, StreamBatches, StreamPlan
        from lorsp.data.stream import DecodePlacement, open_inline, quiet_ray_data
        from lorsp.train import train_loop

        torch.set_num_threads(1)
        quiet_ray_data()
        memory = MemorySampler()
        study = StudyConfig.model_validate_json(study_json)
        size = study.data.image_size
        tick = time.perf_counter()
        shared = ray.get(data[0])
        if isinstance(shared, StreamPlan):
            splits = open_inline(shared, seed=0, placement=DecodePlacement.current(study.resources.stream_cpus))
            batches = StreamBatches(splits.train, batch_size=BATCH, image_size=size, drop_last=True)
        else:
            splits = shared
            batches = BatchIterator(splits.train, batch_size=BATCH, image_size=size, shuffle=True, drop_last=True)
        out: dict[str, float] = {}
        for epoch, name in ((0, "cold"), (1, "warm")):  # a fresh trial process, then its next epoch
            batches.set_epoch(epoch)
            if epoch:
                tick = time.perf_counter()
            seen = 0
            for x, _y in batches:
                if not seen:
                    out[f"first_batch_{name}_s"] = time.perf_counter() - tick
                seen += x.shape[0]
            out[f"images_per_s_{name}"] = seen / (time.perf_counter() - tick)
        metrics = train_loop(study, splits=splits, device="cpu", verbose=False)
        peak = memory.stop()
        return {**out, "epoch_s": metrics["epoch_time_s"], "train_images_per_s": metrics["images_per_s"],
                "peak_rss_mib": peak["VmRSS"], "peak_private_mib": peak["RssAnon"],
                "peak_object_store_pages_mib": peak["RssShmem"]}


def run_trial(study: Any, ref: Any) -> dict[str, float]:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 1}, {"CPU": study.resources.stream_cpus}])
    ray.get(pg.ready())
    actor_cls = ray.remote(num_cpus=1)(TrialProcess)
    actor = actor_cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)).remote()
    try:
        return ray.get(actor.measure.remote(study.model_dump_json(), [ref]))
    finally:
        ray.kill(actor)
        remove_placement_group(pg)


def decode_probe(root: Path, n: int = 256) -> float:
    """Images/s one CPU decodes ImageNet-like JPEGs (500x375) to 224 px with ``read_rows``."""
    from lorsp.data import plan_stream
    from lorsp.data.load import read_rows

    folder = root / "probe-500x375"
    if not (folder / "COMPLETE").is_file():
        import pyarrow as pa
        import pyarrow.parquet as pq
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        blobs = []
        for _ in range(n):
            base = rng.integers(0, 255, (3,))
            grad = np.linspace(0, 1, 500)[None, :, None] * rng.integers(0, 120, (1, 1, 3))
            img = np.clip(base + grad + rng.normal(0, 25, (375, 500, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=85)
            blobs.append(buf.getvalue())
        pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array(np.arange(n) % 2)}),
                       folder / "train.parquet", row_group_size=128)
        (folder / "COMPLETE").write_text("ok\n")
    plan = plan_stream(f"parquet:{folder}", image_size=224, val_fraction=0.01, test_fraction=0.01)
    rows = np.arange(len(plan.manifest))
    read_rows(plan.manifest, rows[:16])  # warm-up
    tick = time.perf_counter()
    read_rows(plan.manifest, rows)
    return len(rows) / (time.perf_counter() - tick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,40000", help="images per generated set (default 10000,40000)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--stream-cpus", type=float, default=None,
                        help="decode CPUs of the streaming trial (default: cores - 1, at least 1)")
    parser.add_argument("--root", default="/tmp/lorsp-bench-stream", help="where the generated sets are kept")
    parser.add_argument("--probe-images", type=int, default=256, help="JPEGs decoded by the 224 px decode probe")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import torch

    from lorsp.data import load_splits_for, plan_stream_for
    from lorsp.ray_session import init_ray, shutdown_ray

    cores = os.cpu_count() or 1
    stream_cpus = args.stream_cpus or float(max(1, cores - 1))
    root = Path(args.root)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# benchmarks/stream.py: {U.machine_line(torch.device('cpu'))}; trial 1 CPU + {stream_cpus:g} decode CPUs")
    for n in sizes:
        write_set(root / f"jpeg{args.image_size}-{n}", n, args.image_size)
    import ray

    init_ray(None, num_cpus=int(1 + stream_cpus))
    rows, record = [], {}
    for n in sizes:
        dataset = f"parquet:{root / f'jpeg{args.image_size}-{n}'}"
        for mode in ("in memory", "streamed"):
            study = study_for(dataset, args.image_size, mode == "streamed", stream_cpus)
            tick = time.perf_counter()
            shared = plan_stream_for(study.data) if mode == "streamed" else load_splits_for(study.data)
            ref = ray.put(shared)
            prep = time.perf_counter() - tick
            del shared
            print(f"  {n} {mode}: driver prep {prep:.1f}s; measuring in a trial process", file=sys.stderr, flush=True)
            m = run_trial(study, ref)
            del ref
            m["driver_prep_s"] = prep
            record[f"{n} {mode}"] = m
            first = f"{m['first_batch_cold_s']:.2f} / {m['first_batch_warm_s']:.2f}"
            rows.append([f"{n:,}", mode, f"{prep:.1f}", first, f"{m['images_per_s_warm']:,.0f}",
                         f"{m['peak_rss_mib']:,.0f}", f"{m['peak_private_mib']:,.0f}", f"{m['epoch_s']:.1f}"])
    probe = decode_probe(root, args.probe_images)
    print(U.table(["images", "data path", "driver prep s", "first batch s (new trial / next epoch)",
                   "images/s delivered", "trial peak RSS MiB", "of which private MiB", "train epoch s"], rows,
                  title=f"In memory vs streamed, {args.image_size} px JPEG Parquet, batch {BATCH}, "
                        f"load average {os.getloadavg()[0]:.1f}"))
    print(f"decode probe: {probe:,.0f} images/s per CPU for 500x375 JPEG -> 224 px (read_rows, PIL, one CPU)")
    U.dump_json(args.json, {"stream_cpus": stream_cpus, "results": record, "decode_224_per_cpu": probe,
                            "machine": U.machine_line(torch.device("cpu"))})
    shutdown_ray()
    return 0


if __name__ == "__main__":
    sys.exit(main())
