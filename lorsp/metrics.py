"""Every metric a trial reports, in one registry: its direction, the split it is measured on,
whether it may select, and whether it lives in [0, 1].

Why one place: the config (which metrics may be objectives), the search (what Optuna records),
MLflow (what is logged per epoch), the Pareto step (the hypervolume's reference point) and the
exporter (``--best``) all need the same facts, and a copy that drifts is how a test-set metric
ends up selecting a "best" prompt. Torch-free, so the command line can validate without it.

Most names are fixed. One family is not: accuracy under input noise is reported per level listed in
the study (``eval.noise_std``), as ``val_acc_noise_<std>`` / ``test_acc_noise_<std>`` with ``<std>``
written by :func:`noise_metric_name`. :data:`METRICS` answers lookups (``in``, ``[]``, ``.get``)
for every member of the family, so validation, ``--best`` and the hypervolume reference treat them
as registry metrics; iterating it lists the fixed names only (the levels depend on the study), so
code that copies metrics out of a result should use :func:`reported` to include the levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

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
    Metric("silent_gates", "max", "val", "LoRSP factor mode: fraction of (image, factor, channel) gates with no "
           "net spike on the validation images, i.e. factors switched off", bounded=True, per_epoch=True),
    Metric("val_acc_noise", "max", "val", "validation accuracy with additive Gaussian pixel noise, mean over the "
           "levels in eval.noise_std (same noisy images in every trial)", bounded=True, per_epoch=True),
    Metric("test_acc_noise", "max", "test", "test accuracy with additive Gaussian pixel noise, mean over the levels "
           "in eval.noise_std, once at the end (reported, never selects)", bounded=True),
    Metric("prompt_energy_nj", "min", "val", "estimated energy per image of generating and adding the prompt "
           "(4.6 pJ per MAC, 0.9 pJ per AC; spike counts measured on the validation images)", per_epoch=True),
    Metric("prompt_ms", "min", "run", "measured forward time of the prompter alone per validation batch (eval "
           "mode)", per_epoch=True),
    Metric("prompt_params", "min", "model", "trainable parameters of the prompt"),
    Metric("trainable_params", "min", "model", "trainable parameters of the prompt and the linear head"),
    Metric("images_per_s", "max", "run", "training images per second of the epoch", per_epoch=True),
    Metric("epoch_time_s", "min", "run", "wall time of the epoch, evaluation included", per_epoch=True),
    Metric("setup_s", "min", "run", "seconds from the start of the training function to its first step (the "
           "model built, the data on the device; process start and imports excluded)"),
)

NOISE_PREFIX = {"val": "val_acc_noise_", "test": "test_acc_noise_"}
"""Per-level noise accuracy names are these prefixes followed by the level (:func:`noise_metric_name`)."""


def noise_metric_name(split: Literal["val", "test"], std: float) -> str:
    """``val_acc_noise_0.05``: the level as Python's shortest float repr, a valid MLflow key
    (digits, ``.``, ``-``, ``e``) that reads back to exactly the same float, so two different
    levels never share a name."""
    return f"{NOISE_PREFIX[split]}{float(std)!r}"


def _parse_noise(name: str) -> tuple[str, float] | None:
    """(split, level) of a name spelled like a per-level noise metric, canonical or not."""
    for split, prefix in NOISE_PREFIX.items():
        if name.startswith(prefix):
            try:
                level = float(name[len(prefix):])
            except ValueError:
                return None
            return (split, level) if 0 <= level < float("inf") else None
    return None


def noise_level(name: str) -> float | None:
    """The noise level a per-level name stands for (``val_acc_noise_0.05`` -> 0.05), else None.

    Only the canonical spelling counts (``val_acc_noise_0.050`` is not a metric), so a name in a
    study file and a name in a result can be compared as strings.
    """
    parsed = _parse_noise(name)
    if parsed is None or noise_metric_name(parsed[0], parsed[1]) != name:  # type: ignore[arg-type]
        return None
    return parsed[1]


def _canonical_noise_name(name: str) -> str | None:
    """``val_acc_noise_0.050`` -> ``val_acc_noise_0.05`` (for a hint); None when it is no level at all."""
    parsed = _parse_noise(name)
    return None if parsed is None else noise_metric_name(parsed[0], parsed[1])  # type: ignore[arg-type]


def _noise_member(name: str) -> Metric | None:
    level = noise_level(name)
    if level is None:
        return None
    split: Split = "val" if name.startswith(NOISE_PREFIX["val"]) else "test"
    when = "" if split == "val" else ", once at the end (reported, never selects)"
    return Metric(name, "max", split, f"{split} accuracy with additive Gaussian pixel noise of std {level:g}{when}",
                  bounded=True, per_epoch=split == "val")


class _Registry(dict[str, Metric]):
    """The fixed metrics as a dict, plus lookups that resolve the per-level noise family."""

    def __missing__(self, name: str) -> Metric:
        member = _noise_member(name) if isinstance(name, str) else None
        if member is None:
            raise KeyError(name)
        return member

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and _noise_member(name) is not None)

    def get(self, name: str, default: Metric | None = None) -> Metric | None:  # type: ignore[override]
        try:
            return self[name]
        except KeyError:
            return default


METRICS: dict[str, Metric] = _Registry({m.name: m for m in _ALL})
SELECTABLE: tuple[str, ...] = tuple(m.name for m in _ALL if m.selectable)
PER_EPOCH: tuple[str, ...] = tuple(m.name for m in _ALL if m.per_epoch)


def reported(result: dict[str, object], *, per_epoch: bool | None = None) -> list[str]:
    """The registry metrics present in `result`, fixed names first, then noise levels in order.

    ``per_epoch=True`` / ``False`` keeps only the series / only the end-of-trial values. Use this
    rather than iterating :data:`METRICS` when copying a result to MLflow or Optuna, so the
    per-level noise metrics of the study travel too.
    """
    names = [m for m in METRICS if m in result]
    names += sorted((k for k in result if k not in names and _noise_member(k) is not None),
                    key=lambda k: (k.startswith(NOISE_PREFIX["test"]), noise_level(k)))
    if per_epoch is None:
        return names
    return [n for n in names if METRICS[n].per_epoch == per_epoch]


def metric(name: str) -> Metric:
    """The registry entry of `name`; KeyError for a name that is not a metric."""
    return METRICS[name]


def is_finite_number(value: Any) -> bool:
    """A reported metric value that can be stored and compared: a real number, not NaN or infinite
    (a bool is not a metric value, though Python counts it an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_bounded(name: str) -> bool:
    """Whether `name` lives in [0, 1] by construction (False for a name the registry does not know):
    what :func:`lorsp.pareto.summarise` needs to place the hypervolume's reference point."""
    known = METRICS.get(name)
    return known is not None and known.bounded


def selection_error(name: str, where: str) -> str | None:
    """Why `name` cannot select trials as `where` (one line naming the fix), or None when it can."""
    known = METRICS.get(name)
    if known is None:
        import difflib

        hint = [_canonical_noise_name(name)] if _canonical_noise_name(name) else difflib.get_close_matches(
            name, list(METRICS), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{where}: unknown metric '{name}'{suggestion}: choose one of {', '.join(SELECTABLE)}"
    if not known.selectable:
        fix = name.replace("test_", "val_", 1) if name.replace("test_", "val_", 1) in METRICS else "val_acc"
        return (f"{where}: '{name}' is measured on the test split, which never selects trials (a choice made on "
                f"test data overstates it); use {fix}")
    return None
