"""The study file: one YAML that describes a single training run *and* a search over it.

Validation happens here, once, on load, so that every later layer (the training loop, the Ray
trials, the exporter) can trust the values it gets. Every problem is reported as a single
:class:`ConfigError` line that names the offending key and says how to fix it, because a
traceback from deep inside a Ray worker ten minutes into a study is the worst possible place to
learn about a typo.

By job: :mod:`~lorsp.config.sections` (the fixed sections), :mod:`~lorsp.config.prompt` (the
`prompt` section, derived from the methods' declarations in :mod:`lorsp.methods`),
:mod:`~lorsp.config.space` (the searched knobs), :mod:`~lorsp.config.study` (the whole study, its
cross-checks and stored studies) and :mod:`~lorsp.config.load` (files and `--set`). No torch.
"""

from lorsp.config.base import unknown
from lorsp.config.load import (
    REQUIRED_KEYS,
    apply_overrides,
    check_backbone_name,
    load_study,
    parse_override,
)
from lorsp.config.prompt import DEFAULT_METHOD, LORSP_MODES, PromptConfig, prompt_keys
from lorsp.config.sections import (
    AUGMENT_MODES,
    SAMPLERS,
    AugmentMode,
    BackboneConfig,
    DataConfig,
    EvalConfig,
    Objective,
    ResourcesConfig,
    SchedulerConfig,
    SearchConfig,
    TrackingConfig,
    TrainConfig,
)
from lorsp.config.space import KNOB_KEYS, RANGE_KEYS, SpaceParam
from lorsp.config.study import DEFAULT_OBJECTIVES, StudyConfig, space_target, stored_study
from lorsp.errors import ConfigError, DataError  # ConfigError stays importable from here

__all__ = [
    "AUGMENT_MODES", "DEFAULT_METHOD", "DEFAULT_OBJECTIVES", "KNOB_KEYS", "LORSP_MODES", "RANGE_KEYS",
    "REQUIRED_KEYS", "SAMPLERS", "AugmentMode", "BackboneConfig", "ConfigError", "DataConfig", "DataError",
    "EvalConfig", "Objective", "PromptConfig", "ResourcesConfig", "SchedulerConfig", "SearchConfig",
    "SpaceParam", "StudyConfig", "TrackingConfig", "TrainConfig", "apply_overrides", "check_backbone_name",
    "load_study", "parse_override", "prompt_keys", "space_target", "stored_study", "unknown",
]
