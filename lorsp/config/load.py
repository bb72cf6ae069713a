"""Reading a study file: YAML, `--set` overrides, the keys a file must name, paths made absolute,
and cheap checks of names against the libraries' registries (data set, timm model)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from lorsp.config.study import StudyConfig, _validate, space_target
from lorsp.errors import ConfigError, DataError
from lorsp.methods import load_plugins


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
        if isinstance(raw.get("plugins"), list) and all(isinstance(p, str) for p in raw["plugins"]):
            load_plugins(raw["plugins"])  # so that a plugin method's knobs are space knobs below
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
