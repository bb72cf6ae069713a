"""One training run of a prompt + linear head on a frozen backbone.

:func:`train_loop` is a plain function of a resolved config and a report callback, so the same code
runs from the command line (`python -m lorsp.train`), inside a Ray Train worker (which passes a
callback that forwards to `ray.train.report`) and in tests. It knows nothing of Ray, MLflow or
Optuna; distributed data parallelism comes from `torch.distributed` when a process group exists.
A run given no splits reads them through :mod:`lorsp.run_data`: in memory, or, where the study
streams its data (`data.stream`), through Ray Data as a search's trial does, on a Ray started for it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from lorsp.children import Stopped, stop_signals
from lorsp.config import ConfigError, StudyConfig, load_study
from lorsp.data import (
    DataError,
    Splits,
    StreamedSplits,
)
from lorsp.errors import data_error_in
from lorsp.evaluation import NoiseSpec, evaluate
from lorsp.evaluation import autocast as _autocast
from lorsp.gallery import GALLERY_FILE, draw_safely, title_for
from lorsp.metrics import noise_metric_name
from lorsp.model import PromptedClassifier, build_model
from lorsp.run_data import run_batches, split_sizes, study_splits

STATE_FILE = "state.pt"
PROMPT_FILE = "prompt.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"

ReportFn = Callable[[dict[str, float], "str | None"], None]
"""Called on every rank after each epoch with the metrics and, on rank 0, a checkpoint folder that
exists only for the duration of the call (copy it if you want to keep it)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run cannot continue and says how to fix it."""


@dataclass
class _Context:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    log: Callable[[str], None] = field(default=print)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _context(device: torch.device | str | None, verbose: bool) -> _Context:
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if device is None:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        else:
            device = torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    log = (lambda msg: print(msg, flush=True)) if (verbose and rank == 0) else (lambda msg: None)
    return _Context(device=device, rank=rank, world_size=world, log=log)


def _optimizer(model: PromptedClassifier, study: StudyConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    t = study.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def _cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _noise_metrics(split: str, result: dict[str, Any], levels: tuple[float, ...]) -> dict[str, float]:
    """``<split>_acc_noise`` (mean over levels) and ``<split>_acc_noise_<std>`` per level."""
    if not levels:
        return {}
    accs = result["noise_acc"]
    out = {f"{split}_acc_noise": sum(accs) / len(accs)}
    out.update({noise_metric_name(split, std): acc for std, acc in zip(levels, accs)})  # type: ignore[arg-type]
    return out


def _save_checkpoint(folder: Path, model: PromptedClassifier, optimizer: torch.optim.Optimizer,
                     scheduler: Any, epoch: int, history: list[dict[str, float]], study: StudyConfig,
                     gallery: bytes | None = None) -> None:
    from safetensors.torch import save_file

    if gallery is not None:  # the pictures drawn this epoch (lorsp.gallery): they travel with the checkpoint
        (folder / GALLERY_FILE).write_bytes(gallery)

    trainable = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(trainable, str(folder / PROMPT_FILE))
    torch.save({"epoch": epoch, "model": trainable, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history}, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(study.model_dump(), sort_keys=False))


def train_loop(
    study: StudyConfig,
    report: ReportFn | None = None,
    *,
    splits: Splits | StreamedSplits | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """Train `study` (already resolved: no searched knob left open) and return the final metrics.

    Seeds: `data.seed` fixes the train / validation / test splits; `train.seed` fixes the prompt and
    head initialisation, the training data order and the augmentation draws; `eval.noise_seed` fixes
    the noise of the robust-accuracy images. Validation accuracy is measured on `splits.val` and
    test accuracy on `splits.test`, both un-augmented.

    Every epoch reports validation accuracy, the prompt's density, firing rate, energy
    (`prompt_energy_nj`) and forward time (`prompt_ms`), and with `eval.noise_std` the noisy
    validation accuracies (per epoch, so a scheduler may use them: each level is one more
    validation pass). Test metrics, clean and noisy, come at the end only.

    `resume_from` is a checkpoint folder written by an earlier epoch (the one handed to `report`):
    training continues after its epoch with the same optimizer and schedule state.

    Without `splits` the study's data are read here: in memory, or streamed through Ray Data where
    `data.stream` says so, on a Ray started for this run (the cluster of RAY_ADDRESS, else an
    embedded local one), with the splits and batches of the search's trial (see :func:`lorsp.run_data.study_splits`).
    """
    t = study.train
    if t.threads:
        torch.set_num_threads(t.threads)
    ctx = _context(device, verbose)
    started = time.perf_counter()
    torch.manual_seed(t.seed)
    if splits is not None:
        return _train(study, splits, report, ctx, started, out_dir, resume_from)
    with study_splits(study, ctx.log) as own:
        return _train(study, own, report, ctx, started, out_dir, resume_from)


def _train(study: StudyConfig, splits: Splits | StreamedSplits, report: ReportFn | None, ctx: _Context,
           started: float, out_dir: str | os.PathLike[str] | None,
           resume_from: str | os.PathLike[str] | None) -> dict[str, float]:
    """The body of :func:`train_loop`, once the data are there."""
    t = study.train
    model = build_model(study, splits.num_classes).to(ctx.device)
    if ctx.device.type == "cuda" and t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        model.backbone = torch.compile(model.backbone)
    net: nn.Module = model
    if ctx.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            broadcast_buffers=False,  # frozen backbone: nothing to keep in sync
        )
    train_batches, val_batches, test_batches = run_batches(splits, study, ctx)
    n_train, n_val, n_test = split_sizes(splits)
    optimizer = _optimizer(model, study)
    steps_per_epoch = max(1, len(train_batches))
    scheduler = _cosine(optimizer, t.epochs * steps_per_epoch, t.warmup_epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    first_epoch = 0
    if resume_from is not None:
        state = torch.load(Path(resume_from) / STATE_FILE, map_location=ctx.device, weights_only=False)
        model.load_trainable_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        first_epoch = int(state["epoch"]) + 1
        ctx.log(f"resumed from {resume_from} after epoch {first_epoch}")
    prompt_params = model.prompter.num_prompt_params()
    trainable_params = model.num_trainable_params()
    setup_s = time.perf_counter() - started  # model, optimiser, data on the device: before the first step
    ctx.log(
        f"{study.prompt.method} on {study.backbone.model} | {splits.source} | train {n_train} "
        f"val {n_val} test {n_test} | prompt params {prompt_params:,} "
        f"trainable {trainable_params:,} | {ctx.device} x{ctx.world_size} | setup {setup_s:.1f}s"
    )
    noise = NoiseSpec(tuple(study.eval.noise_std), study.eval.noise_seed) if study.eval.noise_std else None
    levels = noise.levels if noise is not None else ()
    loss_fn = nn.CrossEntropyLoss()
    metrics: dict[str, float] = history[-1] if history else {}
    gallery: bytes | None = None
    # Pictures of the prompt (lorsp.gallery) go into the checkpoint a trial may end on: the last
    # epoch's, and those after which the study's scheduler may stop it.
    scheduler_stops = study.search.scheduler.stop_epochs(t.epochs) if study.search.scheduler else ()
    for epoch in range(first_epoch, t.epochs):
        model.train()
        train_batches.set_epoch(epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss*n, correct, n
        tick = time.perf_counter()
        for x, y in train_batches:
            with _autocast(ctx.device, t.amp):
                logits = net(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                sums += torch.stack([loss.detach().double() * y.numel(), (logits.argmax(1) == y).sum().double(),
                                     torch.tensor(float(y.numel()), device=ctx.device, dtype=torch.float64)])
        if ctx.world_size > 1:
            dist.all_reduce(sums)
        loss_sum, correct, seen = sums.tolist()  # the one host sync of the epoch
        train_time = time.perf_counter() - tick
        train_loss = loss_sum / max(seen, 1.0)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"loss became {train_loss} in epoch {epoch + 1}: lower train.lr (now {t.lr:g}) "
                f"or prompt.threshold/surrogate_slope"
            )
        val = evaluate(model, iter(val_batches), ctx, t.amp, noise, split="val")
        is_last = epoch == t.epochs - 1
        metrics = {
            "epoch": float(epoch + 1), "loss": train_loss, "train_acc": correct / max(seen, 1.0),
            "val_acc": val["acc"], "prompt_density": val["prompt_density"], "firing_rate": val["firing_rate"],
            **{k: val[k] for k in ("silent_gates",) if k in val},
            **_noise_metrics("val", val, levels),
            "prompt_energy_nj": val["prompt_energy_nj"], "prompt_ms": val["prompt_ms"],
            "prompt_params": float(prompt_params), "trainable_params": float(trainable_params),
            "images_per_s": seen / max(train_time, 1e-9), "epoch_time_s": time.perf_counter() - tick,
            "setup_s": setup_s, "epochs": float(t.epochs), "finished": float(is_last),
        }
        if ctx.world_size > 1:
            # A fingerprint of the shard each rank trained on, gathered to every rank: shows in the
            # reported metrics that DDP workers really read different data.
            idx = train_batches.shard_indices().to(ctx.device)
            digest = ((idx.double() + 1.0) ** 2).sum().reshape(1)
            digests = [torch.zeros_like(digest) for _ in range(ctx.world_size)]
            dist.all_gather(digests, digest)
            metrics.update({f"shard_digest_{r}": float(d) for r, d in enumerate(digests)})
            # How many training rows more than one rank read this epoch (in memory: the padding that
            # evens out the shards; streamed: none) and how many some rank read.
            reads = torch.bincount(idx, minlength=n_train)
            dist.all_reduce(reads)
            metrics.update({"shard_overlap": float((reads > 1).sum()), "shard_rows": float((reads > 0).sum())})
        if is_last or t.eval_test_every_epoch:
            test = evaluate(model, iter(test_batches), ctx, t.amp, noise, split="test")
            metrics["test_acc"] = test["acc"]
            metrics.update(_noise_metrics("test", test, levels))
        history.append(metrics)
        wanted = is_last or (report is not None and epoch + 1 in scheduler_stops)
        gallery = None
        pictured = splits.gallery if isinstance(splits, StreamedSplits) else splits.val
        if ctx.is_main and wanted and pictured is not None and (report is not None or out_dir is not None):
            gallery = draw_safely(model, pictured, study.data.image_size, ctx.device, title_for(study, metrics),
                                  splits.class_names, ctx.log)
        ctx.log(
            f"epoch {epoch + 1}/{t.epochs}  loss {train_loss:.4f}  train_acc {metrics['train_acc']:.3f}  "
            f"val_acc {val['acc']:.3f}  "
            + (f"val_acc_noise {metrics['val_acc_noise']:.3f}  " if levels else "")
            + f"density {val['prompt_density']:.3f}  firing {val['firing_rate']:.3f}  "
            f"{val['prompt_energy_nj']:.3g} nJ  "
            f"{metrics['images_per_s']:.0f} img/s  {metrics['epoch_time_s']:.1f}s"
            + (f"  test_acc {metrics['test_acc']:.3f}" if "test_acc" in metrics else "")
        )
        if report is not None:
            if ctx.is_main:
                with tempfile.TemporaryDirectory(prefix="lorsp-ckpt-") as folder:
                    _save_checkpoint(Path(folder), model, optimizer, scheduler, epoch, history, study, gallery)
                    report(metrics, folder)
            else:
                report(metrics, None)
    if out_dir is not None and ctx.is_main:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _save_checkpoint(out, model, optimizer, scheduler, t.epochs - 1, history, study, gallery)
        summary = dict(metrics, wall_time_s=time.perf_counter() - started)
        (out / METRICS_FILE).write_text(json.dumps({"final": summary, "history": history}, indent=2))
        ctx.log(f"wrote {out / METRICS_FILE}, {out / PROMPT_FILE}, {out / CONFIG_FILE}")
    return metrics


EPOCH_PREFIX = "epoch-"
"""`--out`'s folder of the last finished epoch (`epoch-0003`): where an interrupted run continues."""


def keep_last_epoch(out: Path) -> ReportFn:
    """A report callback that keeps the last finished epoch's checkpoint under `out`.

    The new epoch's folder is complete (written under a temporary name, then renamed) before the
    previous one is removed, so a stop signal at any moment leaves at least one whole checkpoint.
    """
    def report(metrics: dict[str, float], folder: str | None) -> None:
        if folder is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        done = int(metrics["epoch"])  # epochs finished (1-based)
        partial = out / f".{EPOCH_PREFIX}partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(folder, partial)
        target = out / f"{EPOCH_PREFIX}{done:04d}"
        shutil.rmtree(target, ignore_errors=True)  # an earlier run's copy of this epoch, resumed from before it
        partial.rename(target)
        for old in epoch_folders(out)[:-1]:
            shutil.rmtree(old, ignore_errors=True)

    return report


def epoch_folders(out: Path) -> list[Path]:
    """The whole epoch checkpoints under `out`, oldest first."""
    return sorted(p for p in out.glob(f"{EPOCH_PREFIX}[0-9]*") if p.is_dir()) if out.is_dir() else []


def _resume_line(argv: list[str], out: Path, signal_name: str) -> str:
    from lorsp.uris import redact_arg

    last = epoch_folders(out)
    if not last:
        return f"interrupted by {signal_name} before the first epoch ended; nothing to continue from"
    args, skip = [], False
    for arg in argv:  # the same command, continuing from the last epoch into the same folder
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        skip = arg == "--resume"
        if not skip:
            args.append(arg)
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    command = shlex.join(["python", "-m", "lorsp.train", *map(redact_arg, args), "--resume", str(last[-1])])
    return f"interrupted by {signal_name} after {last[-1].name}; continue with: {command}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lorsp.train",
        description="Train one prompt on a frozen backbone from a study file (space knobs use their defaults).",
    )
    parser.add_argument("--config", required=True, help="study YAML, e.g. search_spaces/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set prompt.method=lorvp (repeatable)")
    parser.add_argument("--out", default=None, help="output folder (default: lorsp-runs/train/NAME-TIME)")
    parser.add_argument("--resume", default=None, help="checkpoint folder to continue from")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw_argv)
    out: Path | None = None
    try:
        with stop_signals():  # SIGTERM and SIGHUP (a cluster's stop, a closed terminal) as Ctrl-C
            study = load_study(args.config, args.overrides).resolved()
            out = Path(args.out or Path(study.tracking.root) / "train"
                       / f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            train_loop(study, keep_last_epoch(out), out_dir=out, resume_from=args.resume, device=args.device,
                       verbose=not args.quiet)
            for folder in epoch_folders(out):  # the finished run's own checkpoint is `out` itself
                shutil.rmtree(folder, ignore_errors=True)
    except (ConfigError, DataError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        name, code = (err.name, err.exit_code) if isinstance(err, Stopped) else ("SIGINT", 130)
        print(_resume_line(raw_argv, out, name) if out is not None else f"interrupted by {name}", file=sys.stderr)
        return code
    except Exception as err:
        found = data_error_in(err)  # a damaged file met in a Ray Data task, wrapped by Ray
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
