"""The errors a user can fix, in a module that imports nothing heavy.

Both are ``ValueError`` subclasses whose ``str(e)`` is one line naming the problem and the fix, and
the command-line entry points print them without a traceback. They live here, rather than beside
the code that raises them, so that ``lorsp.tune`` (its ``--help`` and its config errors) can catch
them without importing torch through :mod:`lorsp.data`: that import alone took about 3 s.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError"]


class ConfigError(ValueError):
    """A problem with a study file or an override, phrased as one line for the command line."""


class DataError(ValueError):
    """A data problem the user can fix; ``str(e)`` is one line naming the problem and the fix.

    A ``ValueError`` so that config validation code that already catches ``ValueError`` reports
    it, and its own class so the CLI can print it without a traceback.
    """
