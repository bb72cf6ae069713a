"""Every metric a trial reports, in one registry: its direction, the split it is measured on,
whether it may select, and whether it lives in [0, 1].

Why one place: the config (which metrics may be objectives), the search (what Optuna records),
MLflow (what is logged per epoch), the Pareto step (the hypervolume's reference point) and the
exporter (``--best``) all need the same facts, and a copy that drifts is how a test-set metric
ends up selecting a "best" prompt. Torch-free, so the command line can validate without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["max", "min"]
Split = Literal["train", "val", "test", "model", "run"]


@dataclass(frozen=True)
class Metric:
    name: str
    mode: Mode
    """The better direction, used when a study file or a command does not say."""
    split: Split
    """What it is measured on: a data split, the model itself (parameter counts) or the run (speed)."""
    description: str
    bounded: bool = False
    """In [0, 1] by construction, so its worst value is known in advance (hypervolume reference)."""
    per_epoch: bool = False
    """Reported after every epoch (an MLflow series); otherwise only in the trial's final result."""

    @property
    def selectable(self) -> bool:
        """May choose trials (objective, scheduler metric, ``--best``): everything but the test split.

        A front or a "best" trial chosen on test accuracy overstates that accuracy: the test split
        must stay unseen by every decision so that it still measures something.
        """
        return self.split != "test"


_ALL = (
    Metric("val_acc", "max", "val", "top-1 accuracy on the validation split", bounded=True, per_epoch=True),
    Metric("test_acc", "max", "test", "top-1 accuracy on the test split, once at the end (reported, never selects)",
           bounded=True),
    Metric("train_acc", "max", "train", "top-1 accuracy on the epoch's training batches", bounded=True,
           per_epoch=True),
    Metric("loss", "min", "train", "mean training cross-entropy of the epoch", per_epoch=True),
    Metric("prompt_density", "min", "val", "fraction of non-zero prompt entries on the validation images",
           bounded=True, per_epoch=True),
    Metric("firing_rate", "min", "val", "spikes per neuron per time step on the validation images",
           bounded=True, per_epoch=True),
    Metric("prompt_params", "min", "model", "trainable parameters of the prompt"),
    Metric("trainable_params", "min", "model", "trainable parameters of the prompt and the linear head"),
    Metric("images_per_s", "max", "run", "training images per second of the epoch", per_epoch=True),
    Metric("epoch_time_s", "min", "run", "wall time of the epoch, evaluation included", per_epoch=True),
)

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
SELECTABLE: tuple[str, ...] = tuple(m.name for m in _ALL if m.selectable)
PER_EPOCH: tuple[str, ...] = tuple(m.name for m in _ALL if m.per_epoch)


def metric(name: str) -> Metric:
    """The registry entry of `name`; KeyError for a name that is not a metric."""
    return METRICS[name]


def selection_error(name: str, where: str) -> str | None:
    """Why `name` cannot select trials as `where` (one line naming the fix), or None when it can."""
    known = METRICS.get(name)
    if known is None:
        import difflib

        hint = difflib.get_close_matches(name, list(METRICS), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{where}: unknown metric '{name}'{suggestion}: choose one of {', '.join(SELECTABLE)}"
    if not known.selectable:
        fix = name.replace("test_", "val_", 1) if name.replace("test_", "val_", 1) in METRICS else "val_acc"
        return (f"{where}: '{name}' is measured on the test split, which never selects trials (a choice made on "
                f"test data overstates it); use {fix}")
    return None
