"""The MLflow UI view of a study: the URL state MLflow 3.17's runs table reads (checked against the
real UI in headless Chromium; a real server serves these views in tests/test_study_folder.py)."""

from __future__ import annotations

import json
import urllib.parse

from lorsp.mlflow_views import FRONT_VIEW, SHARED_VIEW_TAG, TRIALS_VIEW, objectives_of, runs_url, view_state, view_tags


def test_objectives_come_from_the_parent_runs_tag():
    assert objectives_of("max val_acc, min prompt_density, min trainable_params") == [
        ("val_acc", "max"), ("prompt_density", "min"), ("trainable_params", "min")]
    assert objectives_of(None) == [] and objectives_of("garbage") == []


def test_the_view_lists_trials_flat_sorted_by_the_first_objective_with_objectives_first():
    state = view_state([("prompt_density", "min"), ("val_acc", "max")])
    assert state["searchFilter"] == "tags.`lorsp.role` = 'trial'"  # flat: no folded parent run
    assert state["orderByKey"] == "metrics.`prompt_density`" and state["orderByAsc"] is True
    assert state["selectedColumns"] == state["columnOrder"] == [
        "metrics.`prompt_density`", "metrics.`val_acc`", "metrics.`test_acc`", "params.`method`", "tags.`pareto`"]
    front = view_state([("val_acc", "max")], front=True)
    assert front["searchFilter"].endswith("and tags.`pareto` = 'true'") and front["orderByAsc"] is False
    tags = view_tags([("val_acc", "max")])
    assert json.loads(tags[SHARED_VIEW_TAG + FRONT_VIEW]) == front
    assert set(tags) == {SHARED_VIEW_TAG + TRIALS_VIEW, SHARED_VIEW_TAG + FRONT_VIEW}


def test_the_address_opens_model_training_mode_on_the_shared_view_and_nothing_else():
    url = runs_url("http://127.0.0.1:5000/", "7")
    base, query = url.split("?")
    assert base == "http://127.0.0.1:5000/#/experiments/7/runs"
    # Any search facet in the URL would make the UI ignore the shared view: only these two.
    assert urllib.parse.parse_qs(query) == {"workflowType": ["machine_learning"], "viewStateShareKey": [TRIALS_VIEW]}
