"""Which searched knobs matter, per objective and per method: Optuna's importance evaluators on a
stored study.

Why per method: the space is conditional (a LoRSP trial samples timesteps and threshold, a linear
probe samples only lr), and every evaluator of `optuna.importance` (fANOVA, PED-ANOVA, mean
decrease in impurity) uses only the parameters that all the trials it is given share. On the whole
study that leaves lr alone; within one method every knob of that method is present, so each method's
full-budget trials are handed to the evaluator as a study of their own. fANOVA (Optuna's default, a
random forest's variance decomposition) is used; its forest is seeded, so the figures repeat.

An importance says how much of an objective's variance over *these* trials a knob explains: with a
dozen trials it is a hint where to look, not a measurement. Methods with fewer than
:data:`MIN_TRIALS` full-budget trials are left out.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lorsp.search import knob_name

MIN_TRIALS = 3
"""Fewer full-budget trials than this say nothing about a method's knobs."""


@dataclass(frozen=True)
class Importance:
    method: str
    objective: str
    knob: str
    importance: float
    trials: int


def knob_importances(study: optuna.Study, objectives: list[str], method_param: str = "method",
                     seed: int = 0) -> list[Importance]:
    """The importance of every knob for every objective, per method, from the study's COMPLETE trials."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values is not None]
    groups: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in complete:
        groups.setdefault(str(t.params.get(method_param, "all")), []).append(t)
    rows: list[Importance] = []
    for method, trials in sorted(groups.items()):
        knobs = sorted(set.intersection(*(set(t.params) for t in trials)) - {method_param}) if trials else []
        if len(trials) < MIN_TRIALS or not knobs:
            continue
        sub = optuna.create_study(directions=study.directions)
        sub.add_trials(trials)
        for i, objective in enumerate(objectives):
            values = {t.values[i] for t in trials}
            if len(values) < 2:
                scores = dict.fromkeys(knobs, 0.0)  # an objective that never varies: no knob moves it
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scores = optuna.importance.get_param_importances(
                        sub, params=knobs, target=lambda t, i=i: t.values[i],
                        evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), normalize=True)
            rows += [Importance(method, objective, knob_name(k), float(scores.get(k, 0.0)), len(trials))
                     for k in knobs]  # `lr@none` is the probe's own lr: shown as lr
    return rows


def write_csv(rows: list[Importance], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "objective", "knob", "importance", "trials"])
        writer.writerows([r.method, r.objective, r.knob, f"{r.importance:.4f}", r.trials] for r in rows)
    return path


def plot(rows: list[Importance], path: Path, title: str) -> Path:
    """One panel per method: a group of bars per knob, one bar per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(dict.fromkeys(r.method for r in rows))
    objectives = list(dict.fromkeys(r.objective for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.8), squeeze=False)
    for ax, method in zip(axes[0], methods):
        mine = [r for r in rows if r.method == method]
        knobs = list(dict.fromkeys(r.knob for r in mine))
        width = 0.8 / max(1, len(objectives))
        for j, objective in enumerate(objectives):
            heights = [next((r.importance for r in mine if r.knob == k and r.objective == objective), 0.0)
                       for k in knobs]
            ax.bar(np.arange(len(knobs)) + j * width, heights, width, label=objective)
        ax.set_xticks(np.arange(len(knobs)) + width * (len(objectives) - 1) / 2, knobs, rotation=30, ha="right")
        ax.set_title(f"{method} ({mine[0].trials} trials)")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("fANOVA importance")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_table(rows: list[Importance]) -> None:
    from rich.console import Console
    from rich.table import Table

    objectives = list(dict.fromkeys(r.objective for r in rows))
    table = Table(title="Which knobs matter (fANOVA importance per objective, per method; full-budget trials)")
    for column in ("method", "knob", *objectives, "trials"):
        table.add_column(column, justify="left" if column in ("method", "knob") else "right")
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        for knob in dict.fromkeys(r.knob for r in mine):
            cells = [next(f"{r.importance:.2f}" for r in mine if r.knob == knob and r.objective == o)
                     for o in objectives]
            table.add_row(method, knob, *cells, str(mine[0].trials))
    Console().print(table)
