"""The fixed sections of the study file (backbone, data, train, eval, objectives, search, resources,
tracking): each a pydantic model whose fields are the keys, types, bounds and defaults.

The `prompt` section is not here: its keys are the methods' declared knobs (:mod:`lorsp.config.prompt`).
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lorsp.config.base import _Section, unknown
from lorsp.metrics import METRICS, noise_level, noise_metric_name, selection_error

SAMPLERS = ("tpe", "nsga2", "gp", "random")
AugmentMode = Literal["none", "crop", "flip", "crop_flip"]
#: ``data.augment`` choices; :data:`lorsp.data.AUGMENT_MODES` is the same tuple (a test holds it).
AUGMENT_MODES: tuple[str, ...] = get_args(AugmentMode)


class BackboneConfig(_Section):
    """The frozen timm network the prompt adapts."""

    model: str = "vit_tiny_patch16_224"
    pretrained: bool = False
    checkpoint: str | None = None
    kwargs: dict[str, Any] = {}  # extra timm.create_model arguments, e.g. {patch_size: 4, depth: 4}


class DataConfig(_Section):
    """What the prompt is trained and judged on, and how training batches are augmented.

    `seed` fixes the train / validation / test splits and nothing else (`train.seed` owns data
    order, augmentation and initialisation), so runs that differ in `train.seed` are judged on the
    same validation and test images.

    `augment` applies to training batches only (validation and test batches never are):
    * `none` (default): LoR-VP's recipe; always safe.
    * `crop`: random shift by up to 1/8 of the side with zero fill; safe where a small translation
      keeps the class (objects, digits, textures, gratings) and nothing needed sits at the border.
    * `flip`: horizontal mirror; only where a mirror image is the same class (natural photos such as
      CIFAR, pets, flowers). Never for digits, text, signs with a direction or orientation-labelled
      images: a flipped 2, 'b' or 30-degree grating is another glyph or class.
    * `crop_flip`: both, the usual CIFAR recipe, under the same proviso as `flip`.

    `stream` (`parquet:` and `imagefolder:` sets only): `false` decodes the set once into memory and
    shares it with every trial (the fast path, for sets that fit); `true` streams it through Ray
    Data, decoding in Ray tasks while trials train, so no process ever holds the decoded set; `auto`
    (the default) streams when the decoded set would exceed `stream_threshold` of this node's memory.
    """

    dataset: str = "digits"
    image_size: int = Field(32, ge=8, le=1024)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    max_train: int | None = Field(None, ge=1)
    root: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    augment: AugmentMode = "none"
    stream: bool | Literal["auto"] = "auto"
    stream_threshold: float = Field(0.25, gt=0.0, le=1.0)  # share of the node's memory (`stream: auto`)

    @field_validator("val_fraction", "test_fraction")
    @classmethod
    def _fraction_leaves_both_sides(cls, value: float, info: ValidationInfo) -> float:
        # The bounds lorsp.data.load_splits enforces, refused here at load time instead of in a
        # trial: an empty validation split leaves nothing to select on, an empty test split
        # nothing to report; a fraction of 1 leaves no training data.
        if 0.0 < value < 1.0:
            return value
        if value >= 1.0:
            raise ValueError(f"must be in (0, 1), got {value}: that leaves no training images; use e.g. 0.1")
        why = (  # 0, negative or NaN
            "the search selects on the validation split, so it cannot be empty; use e.g. 0.1"
            if info.field_name == "val_fraction"
            else "test metrics are reported on the test split, so it cannot be empty; use e.g. 0.2"
        )
        raise ValueError(f"must be in (0, 1), got {value}: {why}")

    @field_validator("stream", mode="before")
    @classmethod
    def _stream_is_a_mode(cls, value: Any) -> Any:
        if isinstance(value, bool) or value == "auto":
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
            return {"true": True, "false": False, "auto": "auto"}[value.lower()]
        raise ValueError(f"must be auto, true or false, got {value!r}")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_is_a_mode(cls, value: Any) -> Any:
        # Old study files said `augment: true`, which meant crop + flip; guessing a mode for them
        # would silently keep flipping digits, so the user has to choose. (ValueError, not
        # TypeError: pydantic turns only ValueError into the one-line report.)
        if isinstance(value, bool):
            raise ValueError(
                f"a boolean is no longer accepted (got {str(value).lower()}; true meant crop_flip): "
                f"choose one of {', '.join(AUGMENT_MODES)}; never flip digits, text or "
                "orientation-labelled images, whose mirror image is another class"
            )
        if isinstance(value, str) and value not in AUGMENT_MODES:
            hint = difflib.get_close_matches(value, AUGMENT_MODES, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ValueError(f"unknown mode '{value}'{suggestion}: choose one of {', '.join(AUGMENT_MODES)}")
        return value


class TrainConfig(_Section):
    epochs: int = Field(5, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.02, gt=0.0)
    weight_decay: float = Field(1.0e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    warmup_epochs: int = Field(0, ge=0)
    seed: int = 0
    amp: bool = True  # bf16 autocast, only where CUDA is present
    compile: bool = False  # torch.compile the frozen backbone
    channels_last: bool = True  # only on CUDA
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None: leave torch's default
    eval_test_every_epoch: bool = False


class EvalConfig(_Section):
    """Extra evaluation beyond clean accuracy: robustness to additive Gaussian pixel noise.

    With `noise_std: [0.05, 0.1]` every validation pass also classifies the validation images with
    N(0, std²) noise added in [0, 1] pixel space (before the prompt, as a deployed prompt would see
    them) and clamped to [0, 1], and reports `val_acc_noise` (the mean over levels) and
    `val_acc_noise_<std>` per level; the test split gets `test_acc_noise*` at the end, for
    reporting. `noise_seed` fixes the noise per image index, independently of `train.seed` and of
    batching, so every trial and epoch is judged on the same noisy images. Each level costs one
    more validation pass per epoch. The default (no levels) is off.
    """

    noise_std: list[float] = []
    noise_seed: int = 0

    def noise_problem(self, metric: str) -> str | None:
        """Why `metric` will never be reported under these settings (a noise metric without its
        level), or None: an objective that no trial reports would fail every trial."""
        level = noise_level(metric)
        if metric not in ("val_acc_noise", "test_acc_noise") and level is None:
            return None
        if not self.noise_std:
            return f"'{metric}' needs noise levels: add e.g. eval: {{noise_std: [0.05, 0.1]}}"
        if level is not None and level not in self.noise_std:
            listed = ", ".join(noise_metric_name("val", s) for s in self.noise_std)
            return f"'{metric}' is not a level in eval.noise_std {self.noise_std}: use one of {listed}"
        return None

    @field_validator("noise_std")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        for std in value:
            if not 0.0 <= std < float("inf"):
                raise ValueError(f"every level must be a finite std >= 0 in [0, 1] pixel units, got {std}")
        names = [noise_metric_name("val", std) for std in value]
        if len(set(names)) != len(names):
            raise ValueError(f"each level once, got {value}")
        return value


#: The keys each knob type accepts besides `type`. A key of another type (numeric bounds on a

def _selectable_metric(section: Any, where: str) -> Any:
    """Refuse a `metric` that cannot be selected on (named at `where`); a missing `mode` becomes the
    metric's own direction."""
    problem = selection_error(section.metric, where)
    if problem:
        raise ValueError(problem)
    if section.mode is None:
        section.mode = METRICS[section.metric].mode
    return section


class Objective(_Section):
    """One objective of the search; `mode` defaults to the metric's natural direction."""

    metric: str
    mode: Literal["max", "min"] | None = None

    @model_validator(mode="after")
    def _selectable(self) -> Objective:
        return _selectable_metric(self, "objectives.metric")


class SchedulerConfig(_Section):
    """Early stopping. `asha`: Ray Tune's ASHA on one `metric`. `pareto_asha`: the same rungs, ranked on
    every objective of the study (:mod:`lorsp.schedulers`; `metric` and `mode` are not used), so the
    sparse end of a front is not stopped for its accuracy alone."""

    type: Literal["asha", "pareto_asha", "none"] = "asha"
    metric: str = "val_acc"
    mode: Literal["max", "min"] | None = None
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)

    @model_validator(mode="after")
    def _selectable(self) -> SchedulerConfig:
        return _selectable_metric(self, "search.scheduler.metric")

    def stop_epochs(self, epochs: int) -> tuple[int, ...]:
        """Epochs after which this scheduler may stop a trial of `epochs` epochs, so that a trial
        can leave what it needs (its prompt gallery) in the checkpoint it may end on.

        ASHA's rungs as Ray's ``_Bracket`` places them for ``lorsp.tune``'s scheduler (one bracket,
        ``max_t = epochs``): ``grace·rf^k`` for ``k < ⌊log(max_t/grace)/log(rf)⌋ + 1``, each decided
        at the first whole epoch that reaches it.
        """
        if self.type not in ("asha", "pareto_asha"):
            return ()
        grace = min(self.grace_period, epochs)
        rungs = int(math.log(epochs / grace) / math.log(self.reduction_factor) + 1)
        return tuple(sorted({math.ceil(grace * self.reduction_factor**k) for k in range(rungs)}))


class SearchConfig(_Section):
    sampler: str = "tpe"
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    scheduler: SchedulerConfig | None = None

    @model_validator(mode="after")
    def _known_sampler(self) -> SearchConfig:
        if self.sampler not in SAMPLERS:
            raise ValueError(unknown("search.sampler", self.sampler, SAMPLERS))
        return self


class ResourcesConfig(_Section):
    """What one trial gets, and how its training processes are started.

    `launcher` (`auto`, the default, picks by `workers_per_trial`):
    * `inline`: the Tune trial process runs the training loop itself and is reused by the next trial,
      so torch and timm are imported once per process instead of once per trial (1 worker only);
    * `ray_train`: the trial fits a Ray Train `TorchTrainer` whose workers train under DDP; a
      controller and fresh worker processes per trial cost tens of seconds of start-up on a small
      machine, which is noise beside a multi-GPU trial and decisive for a quickstart trial.

    `stream_cpus`: a trial that streams its data (`data.stream`) reserves this many CPUs beside its
    workers' in its own placement group, and its Ray Data decode tasks run there, so decoding never
    takes the CPUs of a neighbouring trial and Tune starts only as many trials as the node can feed.
    """

    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    driver_cpus: float = Field(0.0, ge=0)  # the light Tune driver of each ray_train trial
    launcher: Literal["auto", "inline", "ray_train"] = "auto"
    stream_cpus: float = Field(1.0, gt=0)  # decode CPUs of a streaming trial; 1 + cpus_per_worker fits 2 cores

    @model_validator(mode="after")
    def _inline_is_one_worker(self) -> ResourcesConfig:
        if self.launcher == "inline" and self.workers_per_trial > 1:
            raise ValueError(
                f"launcher 'inline' runs one worker per trial, but workers_per_trial is "
                f"{self.workers_per_trial}; set launcher: ray_train (or auto) for DDP trials"
            )
        return self

    @property
    def uses_ray_train(self) -> bool:
        return self.launcher == "ray_train" or (self.launcher == "auto" and self.workers_per_trial > 1)


class TrackingConfig(_Section):
    uri: str | None = None  # MLflow tracking URI; None: sqlite under `root`
    storage: str | None = None  # Optuna RDB URI; None: sqlite under `root`
    root: str = "lorsp-runs"  # where the embedded stores live


