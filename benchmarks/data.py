"""Data loading throughput of ``lorsp.data.BatchIterator`` against the training step it feeds.

    python benchmarks/data.py --config cpu [--threads 1]
    python benchmarks/data.py --config gpu

A batch from ``BatchIterator`` is an index gather of uint8 images already on the device, the
float conversion, the random crop + flip (``crop_flip``, the costliest training mode) and the
resize to the backbone's size.
This times whole epochs of it (synchronised at the end, as the training loop only syncs once per
epoch) interleaved with real training steps of LoR-VP and LoRSP (``benchmarks/step.py``'s
``Bench``: the real model, same batch size), and reports images/s and the data time as a share
of a step: data loading is not the bottleneck when the share is small.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402
import step as S  # noqa: E402

from lorsp.data import BatchIterator, ImageSplit, load_splits  # noqa: E402


def uint8_split(n: int, size: int, seed: int = 0) -> ImageSplit:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return ImageSplit(images, torch.randint(0, 10, (n,), generator=gen))


def cases(config: str, cfg: dict[str, Any], batches: int) -> dict[str, tuple[ImageSplit, str]]:
    """label -> (split, augment mode); each split holds ``batches`` batches.

    "augment" cases time ``crop_flip``, the costliest mode (crop and flip alone are the same one
    gather with fewer random draws); "eval" cases time ``none``, what validation and test run.
    """
    n = cfg["batch_size"] * batches
    size = cfg["image_size"]
    out: dict[str, tuple[ImageSplit, str]] = {}
    if config == "cpu":
        digits = load_splits("digits", image_size=size, val_fraction=0.1, test_fraction=0.1).train
        reps = -(-n // len(digits))
        digits = ImageSplit(digits.images.repeat(reps, 1, 1, 1)[:n], digits.labels.repeat(reps)[:n])
        out[f"digits 8px -> {size}, augment"] = (digits, "crop_flip")
        out[f"uint8 32px -> {size}, augment"] = (uint8_split(n, 32), "crop_flip")
        out[f"uint8 32px -> {size}, eval (no aug)"] = (uint8_split(n, 32), "none")
        out[f"uint8 64px -> {size}, augment (downsample)"] = (uint8_split(n, 64), "crop_flip")
    else:
        out[f"uint8 32px -> {size}, augment (CIFAR)"] = (uint8_split(n, 32), "crop_flip")
        out[f"uint8 {size}px -> {size}, augment"] = (uint8_split(n, size), "crop_flip")
        out[f"uint8 256px -> {size}, augment (downsample)"] = (uint8_split(n, 256), "crop_flip")
        out[f"uint8 32px -> {size}, eval (no aug)"] = (uint8_split(n, 32), "none")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(S.CONFIGS), default="cpu")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed epoch (default 20)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cfg = dict(S.CONFIGS[args.config])
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        parser.error("--config gpu needs a CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(cfg["device"])
    print(f"# benchmarks/data.py --config {args.config}: {U.machine_line(device)}")
    bs, size = cfg["batch_size"], cfg["image_size"]

    fns: dict[str, Callable[[], None]] = {}
    per_call: dict[str, int] = {}
    for label, (split, augment) in cases(args.config, cfg, args.batches).items():
        it = BatchIterator(split, batch_size=bs, image_size=size, device=device, shuffle=augment != "none",
                           augment=augment, seed=0, drop_last=True)

        def epoch(it: BatchIterator = it) -> None:
            for _batch in it:
                pass
            U.sync(device)  # what the training loop waits for once per epoch

        fns[label] = epoch
        per_call[label] = len(it)
    benches = S.build_all(cfg, [S.Variant("lorvp", "lorvp"), S.Variant("lorsp K=4 T=8", "lorsp", 4, 8)])
    for label, b in benches.items():
        fns[f"step {label}"] = b.step
        per_call[f"step {label}"] = 1
    times = U.interleaved(fns, device, rounds=args.rounds, reps=1)
    step_s = {label: U.median(times[f"step {label}"]) for label in benches}
    rows, record = [], {}
    for label, ts in times.items():
        per_batch = [t / per_call[label] for t in ts]
        med = U.median(per_batch)
        is_step = label.startswith("step ")
        shares = [] if is_step else [
            U.median([d / per_call[label] / s for d, s in zip(ts, times[f"step {b}"])]) for b in benches
        ]
        rows.append([label, f"{med * 1e3:.2f}", f"{bs / med:,.0f}",
                     *(["-"] * len(benches) if is_step else [f"{100 * s:.1f}%" for s in shares])])
        record[label] = {"ms_per_batch": med * 1e3, "images_per_s": bs / med,
                         "share_of_step": dict(zip(benches, shares))}
    print(U.table([f"what (batch {bs})", "ms / batch", "images/s", *[f"share of {b} step" for b in benches]],
                  rows, title=f"BatchIterator vs training step ({args.config}, {size} px)"))
    U.dump_json(args.json, {"config": cfg, "machine": U.machine_line(device), "results": record,
                            "step_ms": {k: v * 1e3 for k, v in step_s.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
