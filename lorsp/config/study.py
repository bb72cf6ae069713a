"""The whole study: its sections together, the checks across them, and how a study is validated,
copied with searched values, and read back from what lorsp stored.

Validation happens once, on load, so that every later layer (the training loop, the Ray trials,
the exporter) can trust the values it gets; every problem is one :class:`ConfigError` line that
names the key and the fix (:func:`_format_error`). `plugins` are imported before anything else is
validated, so the methods they register are known to the `prompt` section and the space, in the
driver and in every trial process (which validates the study it is handed).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from lorsp.config.base import _Section, unknown
from lorsp.config.prompt import KEY_ERROR, PromptConfig, prompt_keys
from lorsp.config.sections import (
    BackboneConfig,
    DataConfig,
    EvalConfig,
    Objective,
    ResourcesConfig,
    SearchConfig,
    TrackingConfig,
    TrainConfig,
)
from lorsp.config.space import KNOB_KEYS, SpaceParam
from lorsp.errors import ConfigError
from lorsp.methods import Knob, knobs, load_plugins, method_names, unknown_method

DEFAULT_OBJECTIVES = [
    Objective(metric="val_acc", mode="max"),
    Objective(metric="prompt_density", mode="min"),
    Objective(metric="trainable_params", mode="min"),
]


class StudyConfig(_Section):
    name: str = "lorsp-study"
    plugins: list[str] = []
    """Modules to import before the rest is validated, in the driver and in every trial process:
    each registers its prompt methods (:func:`lorsp.methods.register_method`) on import."""
    backbone: BackboneConfig = BackboneConfig()
    data: DataConfig = DataConfig()
    prompt: PromptConfig = Field(default_factory=PromptConfig)  # built when validated: plugins' knobs too
    train: TrainConfig = TrainConfig()
    space: dict[str, SpaceParam] = {}
    objectives: list[Objective] = Field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        # Before the fields: the `prompt` section and the space are checked against the methods
        # the plugins register. A malformed list is left to pydantic's message about `plugins`.
        plugins = data.get("plugins") if isinstance(data, dict) else None
        if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
            load_plugins(plugins)
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        for key, param in self.space.items():
            section, field = space_target(key)  # raises on unknown knobs
            if section == "prompt" and field != "method":
                _inside_declaration(key, param, knobs()[field])
            elif field == "method":
                for choice in param.choices or []:
                    if choice not in method_names():
                        raise ValueError(f"space.{key}.choices: {unknown_method(choice)}")
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


def _section_keys(section: str) -> tuple[str, ...]:
    """The keys of a section; the `prompt` section's are the registered methods' knobs."""
    return prompt_keys() if section == "prompt" else tuple(_SECTION_MODELS[section].model_fields)


def space_target(key: str) -> tuple[str, str]:
    """Map a space key (`rank`, `lr`, `prompt.rank`) to the (section, field) it sets."""
    if key in _KNOB_ALIASES:
        return _KNOB_ALIASES[key]
    if "." in key:
        section, field = key.split(".", 1)
        if section in _SECTION_MODELS and field in _section_keys(section):
            return section, field
    else:
        for section in _KNOB_SECTIONS:
            if key in _section_keys(section):
                return section, key
    known = sorted(set(_KNOB_ALIASES) | {f for s in _KNOB_SECTIONS for f in _section_keys(s)})
    raise ValueError(unknown("space", key, known, what="knob"))


def _inside_declaration(key: str, param: SpaceParam, knob: Knob) -> None:
    """Refuse a space that samples values its knob's declaration does not accept (a `rank` range
    from 0, a float range for an int knob, a mode that does not exist): every such trial would fail."""
    if knob.type in ("bool", "categorical") and param.type != "categorical":
        raise ValueError(f"space.{key}: {knob.name} is a {knob.type} knob; search it as "
                         f"{{type: categorical, choices: [...]}}")
    if knob.type == "int" and param.type == "float":
        raise ValueError(f"space.{key}: {knob.name} is an int knob; use type: int")
    variants = [("", param)] + [(f".per_method.{m}", param.for_method(m)) for m in param.per_method]
    for where, variant in variants:
        values = [("choices", c) for c in variant.choices or []] if variant.type == "categorical" else [
            ("low", variant.low), ("high", variant.high)]
        if variant.default is not None:
            values.append(("default", variant.default))
        for what, value in values:
            problem = knob.problem(value)
            if problem:
                raise ValueError(f"space.{key}{where}.{what}: {knob.name} {problem}; keep the space inside "
                                 "the knob's declared range")


def _format_error(err: ValidationError) -> str:
    """Reduce pydantic's multi-line report to its first problem, named by its dotted key."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    msg = first["msg"].removeprefix("Value error, ")
    if kind == KEY_ERROR:  # one key of the `prompt` section, named by the error itself
        key = first["ctx"]["key"]
        return f"{loc}.{key}: {msg}" if loc else f"{key}: {msg}"
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


