"""The ``data.dataset`` grammar: parse and check a spec string without touching files or network.

::

    digits                  scikit-learn's bundled 8x8 handwritten digits (offline, 1797 images)
    synthetic[:N]           N generated class-dependent images (offline; default 2000, 10 classes)
    imagefolder:PATH        PATH/<class>/<image>; or PATH/train/... with PATH/test/ (and/or val/)
    parquet:PATH            Hugging Face style parquet file(s): encoded image bytes + integer label
    cifar10, cifar100, ...  torchvision data sets (see ``TORCHVISION_DATASETS``), official splits

Names are case-insensitive and '-' means '_'. The kinds and their arguments come from
:mod:`lorsp.data.registry`.
"""

from __future__ import annotations

from lorsp.data.registry import SOURCES, argument_kinds, source_for
from lorsp.data.sources.base import DatasetSpec
from lorsp.errors import DataError

__all__ = ["parse_spec", "validate_dataset_spec"]


def _valid_specs_text() -> str:
    names = ", ".join(name for s in SOURCES if s.argument != "PATH" for name in s.names)
    forms = ", ".join(f"{kind}:{arg}" for kind, arg in argument_kinds())
    return f"{names}, {forms}"


def _argument_kinds_text() -> str:
    kinds = [f"{kind}:" for kind, _ in argument_kinds()]
    return f"{', '.join(kinds[:-1])} and {kinds[-1]}" if len(kinds) > 1 else kinds[0]


def parse_spec(spec: str) -> DatasetSpec:
    """Split a spec into (kind, argument), refusing a bad one with one line that lists valid specs."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data.dataset is empty; use one of: {_valid_specs_text()}")
    spec = spec.strip()
    head, sep, arg = spec.partition(":")
    kind = head.strip().lower().replace("-", "_")
    source = source_for(kind)
    argument = source.argument if source is not None else None
    if sep:
        if argument == "PATH":
            if not arg.strip():
                raise DataError(f"data.dataset '{spec}' has no path; write {kind}:/path/to/data")
            return DatasetSpec(kind, arg.strip())
        if argument == "N":
            try:
                n = int(arg)
            except ValueError:
                n = 0
            if n < 1:
                raise DataError(
                    f"data.dataset '{spec}': the image count after '{kind}:' must be a positive "
                    f"integer, e.g. {kind}:2000"
                )
            return DatasetSpec(kind, str(n))
        raise DataError(
            f"unknown data.dataset '{spec}': only {_argument_kinds_text()} take an argument; "
            f"valid: {_valid_specs_text()}"
        )
    if argument == "PATH":
        raise DataError(f"data.dataset '{spec}' has no path; write {kind}:/path/to/data")
    if source is not None:
        return DatasetSpec(kind, None)
    raise DataError(f"unknown data.dataset '{spec}'; valid: {_valid_specs_text()}")


def validate_dataset_spec(spec: str) -> None:
    """Check a spec's syntax without touching files or network (cheap, for config loading).

    Paths are not checked for existence here: the study file may be validated on a machine
    other than the one that reads the data.
    """
    parse_spec(spec)
