"""`python -m lorsp.pretrain`: pretrain a small timm backbone offline and save it headless.

This is how `lorsp/assets/vit_micro_patch4_16.gratings.safetensors` was made (the defaults below
are its recipe), so the weights the quickstart prompts can be rebuilt and checked on any machine.
It trains the whole network (backbone + a temporary linear head) on a *source* task, then drops
the head: a prompt study later freezes the backbone and adapts it to a different task. With real
network access you would use hub weights instead (`backbone.pretrained: true` on a timm name).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorsp.config import ConfigError
from lorsp.data import AUGMENT_MODES, BatchIterator, DataError, load_splits

DEFAULT_MODEL = "vit_micro_patch4_16"
DEFAULT_DATASET = "synthetic:4000"
DEFAULT_IMAGE_SIZE = 16
DEFAULT_EPOCHS = 30
DEFAULT_LR = 2e-3
#: Crop only. Class c of the gratings is orientation c*pi/10 (with a class frequency and hue); a
#: horizontal flip maps orientation theta to pi - theta, the orientation of class 10 - c, so a
#: flipped image carries another class's orientation under this class's label. A crop (a shift
#: with zero fill) only moves the grating's phase, which is random anyway: the class is kept.
DEFAULT_AUGMENT = "crop"


def pretrain(
    model_name: str = DEFAULT_MODEL,
    *,
    dataset: str = DEFAULT_DATASET,
    image_size: int = DEFAULT_IMAGE_SIZE,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.05,
    batch_size: int = 128,
    seed: int = 1,
    augment: str = DEFAULT_AUGMENT,
    threads: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    log: Any = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `model_name` (random init) with a linear head on `dataset`; return it headless + a summary.

    AdamW with a one-cycle schedule and prompt training's on-device augmentation, restricted to what
    keeps the source task's classes (`augment`, default crop: see :data:`DEFAULT_AUGMENT`); the
    summary records the recipe and the held-out accuracy on the source task, which is stored in the
    weights file's metadata so a shipped file says what it is.
    """
    import timm

    from lorsp.model import normalisation

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    splits = load_splits(dataset, image_size=image_size, val_fraction=0.1, test_fraction=0.1, seed=seed)
    model = timm.create_model(model_name, pretrained=False, num_classes=splits.num_classes, **(model_kwargs or {}))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in normalisation(model))
    batches = BatchIterator(splits.train, batch_size=batch_size, image_size=image_size, shuffle=True,
                            augment=augment, seed=seed, drop_last=len(splits.train) > batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(batches))
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        batches.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64)
        for x, y in batches:
            loss = F.cross_entropy(model((x - mean) / std), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += torch.stack([loss.detach().double() * len(y), torch.tensor(float(len(y)), dtype=torch.float64)])
        log(f"epoch {epoch + 1}/{epochs}  loss {(total[0] / total[1]).item():.4f}  "
            f"{time.perf_counter() - started:.0f}s")
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in BatchIterator(splits.val, batch_size=2 * batch_size, image_size=image_size):
            correct += int((model((x - mean) / std).argmax(1) == y).sum())
            seen += len(y)
    model.reset_classifier(0)
    summary = {
        "model": model_name, "model_kwargs": model_kwargs or {}, "dataset": splits.source, "image_size": image_size,
        "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size, "seed": seed,
        "augment": augment,
        "source_val_acc": correct / max(seen, 1), "train_time_s": time.perf_counter() - started,
    }
    return model, summary


def save_headless(model: nn.Module, summary: dict[str, Any], out: str | Path) -> Path:
    """Safetensors without the classifier, with the recipe as metadata (`safe_open(...).metadata()`)."""
    from safetensors.torch import save_file

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_file(state, str(path), metadata={"lorsp_pretrain": json.dumps(summary)})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"timm model name (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=f"source data set (default {DEFAULT_DATASET})")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--augment", choices=AUGMENT_MODES, default=DEFAULT_AUGMENT,
                        help=f"training augmentation (default {DEFAULT_AUGMENT}; never flip orientation-labelled data)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    args = parser.parse_args(argv)
    try:
        from lorsp.config import check_backbone_name

        check_backbone_name(args.model)
        model, summary = pretrain(args.model, dataset=args.dataset, image_size=args.image_size, epochs=args.epochs,
                                  lr=args.lr, augment=args.augment, threads=args.threads)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = save_headless(model, summary, args.out)
    print(f"source-task validation accuracy {summary['source_val_acc']:.3f}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
