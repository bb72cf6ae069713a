"""Where the MLflow UI opens for a study: its trials as one flat table, objectives as sorted columns.

Read from MLflow 3.17's own UI (``mlflow/server/js/build``) and checked in headless Chromium:

* The UI starts in *GenAI* mode (an LLM-traces overview) unless the URL says
  ``?workflowType=machine_learning``; the ``mlflow.experimentKind`` experiment tag does not change
  that. The runs table is the route ``#/experiments/<id>/runs``.
* The table reads its search facets from the URL (``searchFilter``, ``orderByKey``, ``orderByAsc``,
  ``startTime``, ``lifecycleFilter``, ``modelVersionFilter``, ``datasetsFilter``), but its columns
  (``selectedColumns``, ``columnOrder``) only from the browser's local storage or from a *shared
  view*: an experiment tag ``mlflow.sharedViewState.<key>`` holding JSON, opened with
  ``?viewStateShareKey=<key>``. A shared view is ignored when the URL also carries a search facet,
  so the facets go into the view. Expanded parent rows (``runsExpanded``) are never shared: hence a
  filter on the trial runs, which shows them flat instead of folded under the study's parent run.
* MLflow sorts by one key only; the view sorts by the study's first objective.

So :func:`publish` writes two shared views per lorsp study (all trials; the Pareto front) and
:func:`runs_url` gives the addresses that open them.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

SHARED_VIEW_TAG = "mlflow.sharedViewState."
TRIALS_VIEW = "lorsp-trials"
FRONT_VIEW = "lorsp-front"
# The tags lorsp.tracking writes (it imports them from here: this module stays free of Ray).
ROLE = "lorsp.role"
STUDY = "lorsp.study"
OBJECTIVES_TAG = "objectives"  # the parent run's: "max val_acc, min prompt_density, ..."
REPORTED = ("test_acc",)  # shown beside the objectives, never sorted or selected on


@dataclass(frozen=True)
class StudyViews:
    """A study's experiment and the addresses of its two views on a server at `base`."""

    name: str
    experiment_id: str
    trials_url: str
    front_url: str


def objectives_of(tag: str | None) -> list[tuple[str, str]]:
    """[(metric, mode)] from the parent run's `objectives` tag ("max val_acc, min prompt_density")."""
    out = []
    for part in (tag or "").split(","):
        words = part.split()
        if len(words) == 2 and words[0] in ("max", "min"):
            out.append((words[1], words[0]))
    return out


def view_state(objectives: list[tuple[str, str]], front: bool = False) -> dict[str, Any]:
    """The shared view: trial runs only (flat), sorted by the first objective, objectives as columns."""
    metrics = [m for m, _ in objectives] + [m for m in REPORTED if m not in {m for m, _ in objectives}]
    columns = [f"metrics.`{m}`" for m in metrics] + ["params.`method`", "tags.`pareto`"]
    search = f"tags.`{ROLE}` = 'trial'" + (" and tags.`pareto` = 'true'" if front else "")
    state: dict[str, Any] = {"searchFilter": search, "selectedColumns": columns, "columnOrder": columns}
    if objectives:
        metric, mode = objectives[0]
        state.update(orderByKey=f"metrics.`{metric}`", orderByAsc=mode == "min")
    return state


def view_tags(objectives: list[tuple[str, str]]) -> dict[str, str]:
    """The experiment tags that hold both views."""
    return {SHARED_VIEW_TAG + TRIALS_VIEW: json.dumps(view_state(objectives)),
            SHARED_VIEW_TAG + FRONT_VIEW: json.dumps(view_state(objectives, front=True))}


def runs_url(base: str, experiment_id: str, view: str = TRIALS_VIEW) -> str:
    """The runs table of an experiment in model-training mode, opened on a shared view."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "viewStateShareKey": view})
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def publish(tracking_uri: str, base: str, name: str | None = None) -> list[StudyViews]:
    """Write (or refresh) the views of every lorsp study in the store, or of study `name`; return
    their addresses on the UI at `base`. A study without a parent run (nothing recorded yet) gets a
    view without objective columns beyond `test_acc`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = []
    for experiment in client.search_experiments(max_results=1000):
        study = experiment.tags.get(STUDY)
        if study is None or (name is not None and study != name):
            continue
        parents = client.search_runs([experiment.experiment_id], f"tags.`{ROLE}` = 'study'", max_results=1,
                                     order_by=["attributes.start_time ASC"])
        objectives = objectives_of(parents[0].data.tags.get(OBJECTIVES_TAG) if parents else None)
        for key, value in view_tags(objectives).items():
            if experiment.tags.get(key) != value:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        found.append(StudyViews(study, experiment.experiment_id, runs_url(base, experiment.experiment_id),
                                runs_url(base, experiment.experiment_id, FRONT_VIEW)))
    return sorted(found, key=lambda v: v.name)
