"""The Optuna sampler of a study: which algorithm proposes trials, from which seed, and how it
survives the pickles Ray Tune makes of its searcher.

Apart from :mod:`lorsp.search` (the space and the stored study) because the sampler is the one piece
that depends on the run, not the study: its seed mixes in how many trials the study already has.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from lorsp.config import StudyConfig


def sampler_seed(study: StudyConfig, history: int) -> int:
    """The sampler's seed for a run that starts with `history` trials in the study.

    A fresh study uses `search.seed` itself, so a search is reproducible from its seed; a resumed
    one mixes in how many trials the study already has, so a rebuilt sampler does not replay the
    proposals it made before the interruption (the same seed would propose trials 0, 1, ... again).
    """
    if history == 0:
        return study.search.seed
    import numpy as np

    return int(np.random.SeedSequence([study.search.seed, history]).generate_state(1)[0])


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II that survives a pickle: Ray Tune pickles its searcher, sampler included, when the
    experiment starts and at every snapshot, and Optuna 5.1's genetic-algorithm base keeps a thread
    lock without a `__getstate__`, so a plain NSGAIISampler stopped every nsga2 study before its first
    trial. The lock (a private attribute: the one place lorsp names it; tests/test_search.py fails
    loudly if Optuna renames it) is left out of the pickle and made anew on loading."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import threading

        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def create_sampler(study: StudyConfig, history: int = 0) -> optuna.samplers.BaseSampler:
    seed = sampler_seed(study, history)
    s = study.search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.sampler == "tpe":
            # group: the conditional space (each method its own knobs) is modelled per group of
            # knobs that occur together; constant_liar keeps concurrent trials apart.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
        if s.sampler == "nsga2":
            return PicklableNSGAII(seed=seed)
        if s.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)
