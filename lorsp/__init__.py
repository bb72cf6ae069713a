"""lorsp: Ray-distributed hyperparameter search for Low-Rank visual Spike Prompting.

Importing the package is cheap on purpose: Ray, MLflow and Optuna are imported only by the modules
that need them, so the method code runs where those are not installed (a bare GPU machine).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: str, **kwargs: Any):  # noqa: ANN201 - torch is imported lazily
    """Load an exported prompt (folder written by `python -m lorsp.export`) as a ready nn.Module."""
    from lorsp.bundle import load_exported

    return load_exported(path, **kwargs)


__all__ = ["__version__", "load"]
