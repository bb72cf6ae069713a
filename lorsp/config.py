"""The study file: one YAML that describes a single training run *and* a search over it.

Validation happens here, once, on load, so that every later layer (the training loop, the Ray
trials, the exporter) can trust the values it gets. Every problem is reported as a single
:class:`ConfigError` line that names the offending key and says how to fix it, because a
traceback from deep inside a Ray worker ten minutes into a study is the worst possible place to
learn about a typo.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from lorsp.errors import ConfigError, DataError  # ConfigError stays importable from here
from lorsp.metrics import METRICS, noise_level, noise_metric_name, selection_error

PROMPT_METHODS = ("none", "pad", "lorvp", "lorsp", "spike_nvpt")
LorspMode = Literal["pixel", "factor"]
#: ``prompt.lorsp_mode`` choices (see docs/methods.md): neurons per pixel, or one gate per factor.
LORSP_MODES: tuple[str, ...] = get_args(LorspMode)
SAMPLERS = ("tpe", "nsga2", "gp", "random")
AugmentMode = Literal["none", "crop", "flip", "crop_flip"]
#: ``data.augment`` choices; :data:`lorsp.data.AUGMENT_MODES` is the same tuple (a test holds it).
AUGMENT_MODES: tuple[str, ...] = get_args(AugmentMode)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class PromptConfig(_Section):
    """Knobs of every prompt method; each method reads only the ones it uses."""

    method: str = "lorsp"
    rank: int = Field(4, ge=1)
    factors: int = Field(1, ge=1)
    timesteps: int = Field(4, ge=1)
    threshold: float = Field(0.5, gt=0.0)
    decay: float = Field(0.5, gt=0.0, lt=1.0)
    surrogate_slope: float = Field(4.0, gt=0.0)
    pad_width: int = Field(4, ge=1)
    noise_std: float = Field(0.1, ge=0.0)
    low_rank: bool = False
    lorsp_mode: LorspMode = "pixel"

    @model_validator(mode="after")
    def _known_method(self) -> PromptConfig:
        if self.method not in PROMPT_METHODS:
            raise ValueError(_unknown("prompt.method", self.method, PROMPT_METHODS))
        return self


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
#: categorical knob, choices on a float one) would be silently ignored by the sampler, so
#: :class:`SpaceParam` refuses it instead: the study would run, but not the search that was written.
KNOB_KEYS: dict[str, tuple[str, ...]] = {
    "int": ("low", "high", "log", "step", "default", "per_method"),
    "float": ("low", "high", "log", "step", "default", "per_method"),
    "categorical": ("choices", "default", "balanced"),
}
#: What a numeric knob's `per_method` entry may change: its range and its default.
RANGE_KEYS: tuple[str, ...] = ("low", "high", "log", "step", "default")


def _foreign_key_problem(kind: str, key: str) -> str:
    """Why `key` does not belong to a knob of type `kind`, and the fix, in one line."""
    accepted = KNOB_KEYS[kind]
    owners = [other for other, keys in KNOB_KEYS.items() if key in keys and other != kind]
    belongs = f" ('{key}' is for {' and '.join(owners)} knobs)" if owners else ""
    hint = difflib.get_close_matches(key, accepted, n=1)
    instead = f" (did you mean '{hint[0]}'?)" if hint and not owners else ""
    a = "an" if kind[0] in "aeiou" else "a"
    return (f"'{key}' is not a key of {a} {kind} knob{belongs}{instead}; {a} {kind} knob accepts "
            f"type, {', '.join(accepted)}: remove '{key}'")


class SpaceParam(_Section):
    """One searched knob: a numeric range or a list of choices, plus the value used when not searching.

    Each type takes only its own keys (:data:`KNOB_KEYS`); any other key is refused on load.
    """

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    default: Any = None
    balanced: bool = False
    """Categorical only: give every choice the same number of trials (e.g. one budget per method)
    instead of letting the sampler favour one; the other knobs are still sampled. Several balanced
    knobs share the budget among their combinations (see `lorsp.search.balanced_cells`)."""
    per_method: dict[str, dict[str, Any]] = {}
    """Int and float only: method -> its own `low`, `high`, `log`, `step` and/or `default` for a knob
    that several methods read, where one range cannot serve them all (a linear probe's lr is 5-10x
    a prompt's). Keys left out are the knob's own. The search samples each method from its range
    (as its own Optuna parameter, see `lorsp.search.param_name`) and a single run of that method
    uses its default."""

    @model_validator(mode="before")
    @classmethod
    def _own_keys_only(cls, data: Any) -> Any:
        # Before field validation, so that the type's own list is what the user reads; an unknown
        # or missing `type` is left to pydantic, whose message lists the types.
        if not isinstance(data, dict) or data.get("type") not in KNOB_KEYS:
            return data
        kind = data["type"]
        for key in sorted(map(str, data)):  # the first in name order, whatever the file's order
            if key != "type" and key not in KNOB_KEYS[kind]:
                raise ValueError(_foreign_key_problem(kind, str(key)))
        return data

    @model_serializer(mode="wrap")
    def _own_keys_dumped(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A dump is read back (stored studies, every trial's config): it carries only the keys
        # its type accepts, or the strict check above would refuse lorsp's own output.
        dumped = {k: v for k, v in handler(self).items() if k == "type" or k in KNOB_KEYS[self.type]}
        if not dumped.get("per_method", True):
            del dumped["per_method"]  # the default: left out, as a study file leaves it out
        return dumped

    @model_validator(mode="after")
    def _consistent(self) -> SpaceParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical knob needs a non-empty `choices` list")
            if self.default is not None and self.default not in self.choices:
                raise ValueError(f"default {self.default!r} is not one of choices {self.choices}")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} knob needs `low` and `high`")
        if self.low > self.high:
            raise ValueError(f"empty range: low {self.low} > high {self.high}; swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int knob needs whole-number `low` and `high`")
        if self.step is not None:
            if not self.step > 0:
                raise ValueError(f"step must be > 0, got {self.step}; remove it for a continuous range")
            if self.type == "int" and self.step != int(self.step):
                raise ValueError(f"an int knob needs a whole-number `step`, got {self.step}")
            if self.log and not (self.type == "int" and self.step == 1):
                raise ValueError("a log-scale knob cannot have a step (Optuna samples it continuously): "
                                 "remove `step` or `log`")
        if self.default is not None:
            if not isinstance(self.default, (int, float)) or isinstance(self.default, bool):
                raise ValueError(f"default {self.default!r} is not a number")
            if not self.low <= self.default <= self.high:
                raise ValueError(f"default {self.default} lies outside [{self.low}, {self.high}]")
        for method in self.per_method:
            self._check_method_range(method)
        return self

    def _check_method_range(self, method: str) -> None:
        """Refuse a `per_method` entry that names no method, changes more than the range, or is
        not a valid knob of its own; the message says which entry."""
        where = f"per_method.{method}"
        if method not in PROMPT_METHODS:
            raise ValueError(_unknown("per_method", method, PROMPT_METHODS, what="method"))
        override = self.per_method[method]
        for key in sorted(map(str, override)):
            if key not in RANGE_KEYS:
                raise ValueError(f"{where}: '{key}' cannot differ by method; {where} accepts "
                                 f"{', '.join(RANGE_KEYS)}: remove '{key}'")
        self.for_method(method)

    def for_method(self, method: str) -> SpaceParam:
        """This knob as `method` sees it: its `per_method` range and default over the shared ones."""
        override = self.per_method.get(method)
        if not override:
            return self.model_copy(update={"per_method": {}})
        base = {k: v for k, v in self.model_dump().items() if k != "per_method"}
        try:
            return SpaceParam.model_validate({**base, **override})
        except ValidationError as err:
            problem = err.errors()[0]["msg"].removeprefix("Value error, ")
            if problem.startswith("default") and "default" not in override:
                problem = f"the knob's {problem}: give per_method.{method} its own default"
            raise ValueError(f"per_method.{method}: {problem}") from None

    def value(self, method: str | None = None) -> Any:
        """The value a single run (of `method`, when given) uses: `default`, else the middle of the
        range or the first choice; `method`'s own range and default where `per_method` has them."""
        if method is not None and method in self.per_method:
            return self.for_method(method).value()
        if self.default is not None:
            return int(self.default) if self.type == "int" else self.default
        if self.type == "categorical":
            return self.choices[0]
        if self.log:
            mid = (self.low * self.high) ** 0.5
        else:
            mid = (self.low + self.high) / 2
        return int(round(mid)) if self.type == "int" else mid


class Objective(_Section):
    """One objective of the search; `mode` defaults to the metric's natural direction."""

    metric: str
    mode: Literal["max", "min"] | None = None

    @model_validator(mode="after")
    def _selectable(self) -> Objective:
        problem = selection_error(self.metric, "objectives.metric")
        if problem:
            raise ValueError(problem)
        if self.mode is None:
            self.mode = METRICS[self.metric].mode
        return self


class SchedulerConfig(_Section):
    """Early stopping. `asha`: Ray Tune's ASHA on one `metric`. `pareto_asha`: the same rungs, ranked on
    every objective of the study (:mod:`lorsp.schedulers`; `metric` and `mode` are not used), so the
    sparse end of a front is not stopped for its accuracy alone."""

    type: Literal["asha", "pareto_asha", "none"] = "asha"
    metric: str = "val_acc"
    mode: Literal["max", "min"] | None = None

    @model_validator(mode="after")
    def _selectable(self) -> SchedulerConfig:
        problem = selection_error(self.metric, "search.scheduler.metric")
        if problem:
            raise ValueError(problem)
        if self.mode is None:
            self.mode = METRICS[self.metric].mode
        return self
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)

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
            raise ValueError(_unknown("search.sampler", self.sampler, SAMPLERS))
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


DEFAULT_OBJECTIVES = [
    Objective(metric="val_acc", mode="max"),
    Objective(metric="prompt_density", mode="min"),
    Objective(metric="trainable_params", mode="min"),
]


class StudyConfig(_Section):
    name: str = "lorsp-study"
    backbone: BackboneConfig = BackboneConfig()
    data: DataConfig = DataConfig()
    prompt: PromptConfig = PromptConfig()
    train: TrainConfig = TrainConfig()
    space: dict[str, SpaceParam] = {}
    objectives: list[Objective] = Field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        for key in self.space:
            space_target(key)  # raises on unknown knobs
        if not self.objectives:
            raise ValueError("objectives: list at least one {metric, mode}")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: each metric once, got {names}")
        scheduler = self.search.scheduler
        for where, metric in [("objectives.metric", n) for n in names] + (
                [("search.scheduler.metric", scheduler.metric)] if scheduler else []):
            problem = self.eval.noise_problem(metric)
            if problem:
                raise ValueError(f"{where}: {problem}")
        return self

    def with_params(self, params: dict[str, Any]) -> StudyConfig:
        """A copy with searched values applied (`rank` -> prompt.rank, `lr` -> train.lr, ...)."""
        raw = self.model_dump()
        for key, value in params.items():
            section, field = space_target(key)
            raw[section][field] = value
        return _validate(raw)

    def resolved(self) -> StudyConfig:
        """The single-run configuration: fixed settings plus every space knob's default, the
        run's method's own default where the knob has one (`per_method`)."""
        method = self.space["method"].value() if "method" in self.space else self.prompt.method
        return self.with_params({k: p.value(method) for k, p in self.space.items()})

    def redacted(self) -> StudyConfig:
        """The study as lorsp records it (MLflow, Optuna, checkpoints, exports) and as trials receive
        it: `tracking.uri` and `tracking.storage` without their passwords (:func:`lorsp.uris.redact`).
        `self` when there is nothing to hide."""
        from lorsp.uris import redact

        t = self.tracking
        uri, storage = redact(t.uri), redact(t.storage)
        if uri == t.uri and storage == t.storage:
            return self
        return self.model_copy(update={"tracking": t.model_copy(update={"uri": uri, "storage": storage})})


# Sections a space knob may target, in lookup order for short names.
_KNOB_SECTIONS = ("prompt", "train", "data")
_KNOB_ALIASES = {"method": ("prompt", "method")}
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "backbone": BackboneConfig, "data": DataConfig, "prompt": PromptConfig, "train": TrainConfig,
}


def space_target(key: str) -> tuple[str, str]:
    """Map a space key (`rank`, `lr`, `prompt.rank`) to the (section, field) it sets."""
    if key in _KNOB_ALIASES:
        return _KNOB_ALIASES[key]
    if "." in key:
        section, field = key.split(".", 1)
        model = _SECTION_MODELS.get(section)
        if model is not None and field in model.model_fields:
            return section, field
    else:
        for section in _KNOB_SECTIONS:
            if key in _SECTION_MODELS[section].model_fields:
                return section, key
    known = sorted(set(_KNOB_ALIASES) | {f for s in _KNOB_SECTIONS for f in _SECTION_MODELS[s].model_fields})
    raise ValueError(_unknown("space", key, known, what="knob"))


def _unknown(key: str, value: str, choices: Any, what: str = "value") -> str:
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"unknown {what} '{value}' for {key}{suggestion}: choose one of {', '.join(map(str, choices))}"


def _format_error(err: ValidationError) -> str:
    """Reduce pydantic's multi-line report to its first problem, named by its dotted key."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    msg = first["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        section = loc.rsplit(".", 1)[0] if "." in loc else ""
        model = {**_SECTION_MODELS, "eval": EvalConfig}.get(section, StudyConfig if not section else None)
        known = ", ".join(model.model_fields) if model else ""
        return f"{loc}: unknown key; remove it or use one of: {known}"
    if kind == "missing":
        return f"{loc}: required key is missing; add it"
    if "input" in first and kind not in ("value_error", "assertion_error"):
        return f"{loc}: {msg} (got {first['input']!r}); fix the value in the study file or --set"
    return f"{loc}: {msg}" if loc else msg


def _validate(raw: dict[str, Any]) -> StudyConfig:
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def stored_study(raw: str | dict[str, Any]) -> StudyConfig:
    """A study config that lorsp itself wrote earlier (Optuna storage, checkpoint, export), read
    with the settings that have since been retired translated, so old studies stay readable.

    A study *file* gets no such help: there a retired key is refused with a one-line fix, since a
    person is there to edit it. A stored config describes what a finished run really did:
    `augment: true` was crop + flip, `false` was none, `num_workers` was never read, and a space
    knob was written with every key of every type (`low: null` on a categorical knob, `balanced:
    false` on a float one), which the sampler ignored.
    """
    import json

    data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    section = dict(data.get("data") or {})
    section.pop("num_workers", None)
    if isinstance(section.get("augment"), bool):
        section["augment"] = "crop_flip" if section["augment"] else "none"
    data["data"] = section
    data["space"] = {name: _own_keys(knob) for name, knob in (data.get("space") or {}).items()}
    for objective in data.get("objectives") or []:
        if isinstance(objective, dict) and objective.get("metric", "").startswith("test_"):
            raise ConfigError(f"the stored study selects on {objective['metric']}, a test-split metric; "
                              "its results cannot be used as they are: re-run the study with val_acc")
    return _validate(data)


def _own_keys(knob: Any) -> Any:
    """A stored knob with only its type's keys (see :func:`stored_study`)."""
    if not isinstance(knob, dict) or knob.get("type") not in KNOB_KEYS:
        return knob
    return {k: v for k, v in knob.items() if k == "type" or k in KNOB_KEYS[knob["type"]]}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=0.1` -> (['train', 'lr'], 0.1); the value is parsed as YAML so types come out right."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set train.lr=0.05")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: empty key; write section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return path, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` strings to a raw (unvalidated) study dict.

    A key that names a space knob (`--set space.rank.default=8`) or a plain setting
    (`--set prompt.rank=8`) works; the latter also removes that knob from `space`, because a user
    who pins a value on the command line expects it to be used rather than the knob's default.
    """
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
        if len(path) == 2 and path[0] != "space":
            for knob in list((raw.get("space") or {}).keys()):
                try:
                    target = space_target(knob)
                except ValueError:
                    continue
                if target == (path[0], path[1]):
                    del raw["space"][knob]
    return raw


# What a study file must name itself. The other sections have defaults that suit any study, but
# these two do not: a file without them would train an untrained `vit_tiny_patch16_224` on digits
# for minutes, which is never what its author meant. Only the *file* loader asks for them;
# `StudyConfig.model_validate` keeps its defaults for code and tests that build partial studies.
REQUIRED_KEYS = (("backbone", "model"), ("data", "dataset"))
_REQUIRED_TEXT = " and ".join(f"{section}.{key}" for section, key in REQUIRED_KEYS)


def _check_required(path: str | os.PathLike[str], raw: dict[str, Any]) -> None:
    """Refuse a study file (after `--set`) that leaves the backbone or the data set to defaults."""
    missing = [
        f"{section}.{key}" for section, key in REQUIRED_KEYS
        if raw.get(section) is None
        or (isinstance(raw[section], dict) and raw[section].get(key) in (None, ""))
    ]  # a section of the wrong type is left to pydantic, whose message names the type
    if missing:
        raise ConfigError(
            f"{path}: {' and '.join(missing)} missing; a study file names its backbone and data set, "
            f"e.g. backbone: {{model: vit_base_patch16_224.augreg_in21k}} and data: {{dataset: cifar100}} "
            "(see search_spaces/quickstart.yaml) or pass --set KEY=VALUE"
        )


def load_study(path: str | os.PathLike[str], overrides: list[str] | None = None) -> StudyConfig:
    """Read, override and validate a study file, raising :class:`ConfigError` with one line."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such study file; pass --config/--space with a path to a YAML file")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: malformed YAML ({problem}); fix the syntax") from None
    if raw is None:  # an empty or comment-only file: every setting would silently be a default
        raise ConfigError(
            f"{path}: the study file is empty; it needs at least {_REQUIRED_TEXT} "
            "(and usually name, prompt, train, space); start from a copy of search_spaces/quickstart.yaml"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the study file must be a mapping of sections (name, backbone, data, ...)")
    raw = apply_overrides(raw, overrides or [])
    _check_required(path, raw)
    if raw.get("space") is None:
        raw.pop("space", None)
    study = _validate(raw)
    _check_names(study)
    return _absolute_paths(study)


def _absolute_paths(study: StudyConfig) -> StudyConfig:
    """Ray workers run in their own working directory: pin every relative path to the caller's."""
    data, backbone = study.data, study.backbone
    kind, sep, path = data.dataset.partition(":")
    if sep and kind in ("imagefolder", "parquet") and not os.path.isabs(os.path.expanduser(path)):
        data.dataset = f"{kind}:{Path(path).expanduser().resolve()}"
    if data.root and not os.path.isabs(os.path.expanduser(data.root)):
        data.root = str(Path(data.root).resolve())
    if backbone.checkpoint and not os.path.isabs(os.path.expanduser(backbone.checkpoint)):
        backbone.checkpoint = str(Path(backbone.checkpoint).resolve())
    return study


def _check_names(study: StudyConfig) -> None:
    """Cheap checks against the libraries' registries, so a typo fails before any worker starts."""
    from lorsp.data.spec import validate_dataset_spec

    try:
        validate_dataset_spec(study.data.dataset)
    except DataError as err:
        raise ConfigError(f"data.dataset: {err}") from None
    check_backbone_name(study.backbone.model)


def check_backbone_name(name: str) -> None:
    import timm

    import lorsp.backbones  # noqa: F401  (registers lorsp's own models with timm)

    base = name.split(".", 1)[0]
    if timm.is_model(base) or timm.is_model(name):
        return
    candidates = timm.list_models()
    hint = difflib.get_close_matches(base, candidates, n=3, cutoff=0.6)
    suggestion = f" (closest: {', '.join(hint)})" if hint else ""
    raise ConfigError(
        f"backbone.model: unknown timm model '{name}'{suggestion}; see timm.list_models() for names"
    )
