"""The Ray this process drives: attach to a cluster or start an embedded local one
(:func:`init_ray`), end it (:func:`shutdown_ray`), and the Tune settings Ray reads only from the
environment (:func:`tune_environment`).

Shared by the commands that run trials on Ray Tune (:mod:`lorsp.tune`, :mod:`lorsp.confirm`), the
tests and the benchmarks, so that none of them imports another command for it. Ray is imported
only inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

_EMBEDDED: list[Any] = []
"""The embedded head this process started (:mod:`lorsp.embedded_ray`), ended by :func:`shutdown_ray`."""


def init_ray(address: str | None, num_cpus: int | None = None, *,
             hint: str = "pass --address to use a cluster") -> None:
    """Attach to a cluster (`--address`, or RAY_ADDRESS as set by `ray job submit`) or start a local one.

    A local Ray is an embedded head in a session of its own (:mod:`lorsp.embedded_ray`), so that a
    signal to the driver's process group stops the study cleanly instead of killing the head under
    it; :func:`shutdown_ray` ends it. Its address goes to every worker: Ray Train's placement-group
    cleaner queries the state API without an address, which fails ("multiple active Ray instances")
    when another local Ray runs on the machine, and then finished trials' placement groups leak until
    the next trial waits forever.
    """
    import atexit

    import ray

    if ray.is_initialized():
        return
    env_vars = {"RAY_TRAIN_V2_ENABLED": "1"}  # the default of the pinned Ray; for its workers, said outright
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        from lorsp import embedded_ray

        print(f"starting an embedded local Ray ({hint})", flush=True)
        # A local Ray makes its own auth token; its notice about token authentication is not news here.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        head = embedded_ray.start(num_cpus)
        _EMBEDDED.append(head)
        atexit.register(shutdown_ray)
        address = env_vars["RAY_ADDRESS"] = head.address
        embedded_ray.attach_with_token_auth()
    ray.init(address=address, logging_level="WARNING", log_to_driver=True, runtime_env={"env_vars": env_vars})


def shutdown_ray() -> None:
    """Disconnect from Ray and end the embedded head, if this process started one."""
    import ray

    ray.shutdown()
    while _EMBEDDED:
        _EMBEDDED.pop().stop()


QUIET_TUNE_CONSOLE = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_THRESHOLD_S": "10"}
"""lorsp prints its own line per trial: Tune's new-style console output (a configuration box, a
TensorBoard hint) and its "slow callback" warnings for an MLflow call on a loaded machine would bury
those lines; the legacy reporter honours verbose=0."""


@contextlib.contextmanager
def tune_environment(defaults: dict[str, str], forced: dict[str, str] | None = None) -> Iterator[None]:
    """Ray Tune settings that Ray reads only from the environment, for the Tuner built and run inside:
    `defaults` unless the user set them, `forced` whatever the user set. The environment is restored
    afterwards, so a caller of the library keeps the process it had."""
    from ray.tune.utils import warn_if_slow

    forced = forced or {}
    saved = {key: os.environ.get(key) for key in (*defaults, *forced)}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    os.environ.update(forced)
    # Ray reads TUNE_WARN_THRESHOLD_S once, when ray.tune is imported (long before a study starts):
    # its threshold is set where Ray keeps it, its public class attribute, for the same span.
    threshold = warn_if_slow.DEFAULT_THRESHOLD
    if "TUNE_WARN_THRESHOLD_S" in os.environ:
        warn_if_slow.DEFAULT_THRESHOLD = float(os.environ["TUNE_WARN_THRESHOLD_S"])
    try:
        yield
    finally:
        warn_if_slow.DEFAULT_THRESHOLD = threshold
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
