"""The errors a user can fix, in a module that imports nothing heavy.

Both are ``ValueError`` subclasses whose ``str(e)`` is one line naming the problem and the fix, and
the command-line entry points print them without a traceback. They live here, rather than beside
the code that raises them, so that ``lorsp.tune`` (its ``--help`` and its config errors) can catch
them without importing torch through :mod:`lorsp.data`: that import alone took about 3 s.
"""

from __future__ import annotations

import re

__all__ = ["ConfigError", "DataError", "data_error_in"]


class ConfigError(ValueError):
    """A problem with a study file or an override, phrased as one line for the command line."""


class DataError(ValueError):
    """A data problem the user can fix; ``str(e)`` is one line naming the problem and the fix.

    A ``ValueError`` so that config validation code that already catches ``ValueError`` reports
    it, and its own class so the CLI can print it without a traceback.
    """


_WRAPPED = re.compile(r"lorsp\.errors\.DataError: (.*)")


def data_error_in(err: BaseException) -> DataError | None:
    """The DataError that ``err`` is or wraps, else None.

    A DataError raised in another process (a Ray Data decode task, a Ray Train worker) reaches the
    caller wrapped by Ray (``RayTaskError(DataError)``, or a ``UserCodeException`` whose text holds
    the task's traceback): its one line is read back from there, so a damaged file fails a run once
    with the file to fix, rather than as a lost process that Ray retries.
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        found = _WRAPPED.search(str(cause))
        if found:
            return DataError(found.group(1).strip())
        inner = getattr(cause, "cause", None)  # a RayTaskError keeps the task's own exception there
        if isinstance(inner, BaseException):
            cause = inner
        elif isinstance(cause, DataError):
            return cause
        else:
            cause = cause.__cause__ or cause.__context__
    return None
