"""The end of a study in MLflow: the Optuna records (the truth) reconciled into the runs, the
Pareto front and the hypervolume on the parent run. No Ray."""

from __future__ import annotations

import json
import math
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorsp.config import StudyConfig
from lorsp.keys import CHECKPOINT, EPOCHS_DONE
from lorsp.layout import MLFLOW_DB, default_root, find_checkpoint
from lorsp.metrics import is_bounded
from lorsp.outcome import outcome_of_state
from lorsp.pareto import REFERENCE_RULE, TrialRecord, summarise
from lorsp.report import plot_front, plot_fronts_by, trial_rows, write_table
from lorsp.tracking.store import (
    CHECKPOINT_ARTIFACTS,
    Store,
    connect,
    is_number,
    mark_closed,
    one_line,
    tracking_uri,
)
from lorsp.uris import redact, scrub, with_hint


def finish_study(study: StudyConfig, records: list[TrialRecord], uri: str | None = None,
                 warn: Callable[[str], None] | None = None, warned: bool = False) -> dict[str, Any] | None:
    """Close the study's MLflow runs and add the Pareto selection; never raises.

    Reconciles MLflow with the Optuna records (the truth): a trial without a child run (MLflow was
    down when it ran) gets one from the stored values, runs still RUNNING are closed, and every
    child run gets `pareto` / `pareto_rank` tags; the parent gets the hypervolume and the front
    plot. Returns a summary dict, or None when the store could not be reached (a warning says how
    to re-log, unless `warned`: the recording callback already said so during the study).
    """
    warn = warn or (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        done = record_study(study, records, uri)
    except Exception as err:
        if warned:
            return None
        reason = scrub(one_line(err), tracking_uri(study, uri))
        warn(f"warning: could not record the end of study '{study.name}' in MLflow ({reason}); the results "
             f"are in the Optuna storage: re-log them with python -m lorsp.tracking relog --name {study.name} "
             f"--root {study.tracking.root}")
        return None
    print(f"MLflow: study '{study.name}' recorded in {redact(done['uri'])} (experiment {done['experiment_id']}, "
          f"parent run {done['parent_run_id']}); browse it with: {ui_command(study, done['uri'])}", flush=True)
    return done


def ui_command(study: StudyConfig, uri: str) -> str:
    """The `lorsp.ui` command that shows this study: `--root` for the embedded store under the study's
    root, `--tracking-uri` (password masked, with a note on how to give it) for any other store."""
    if uri == f"sqlite:///{default_root(study) / MLFLOW_DB}":
        return f"python -m lorsp.ui --root {shlex.quote(study.tracking.root)}"
    return with_hint(f"python -m lorsp.ui --tracking-uri {shlex.quote(redact(uri) or uri)}", uri)


def record_study(study: StudyConfig, records: list[TrialRecord], uri: str | None = None) -> dict[str, Any]:
    """The work of :func:`finish_study` and `relog`, raising ConfigError on an unreachable store."""
    store = connect(study, uri)
    parent_id, _ = store.ensure_parent()
    children = store.child_runs()
    objectives = [(o.metric, o.mode) for o in study.objectives]
    created = updated = 0
    run_ids: dict[int, str] = {}
    for record in records:
        outcome = outcome_of_state(record.state, record.epochs_done, record.error)
        if outcome is None:
            continue
        run = children.get(record.number)
        status = outcome.mlflow_status
        if run is None:
            run_id = store.create_child(parent_id, record.number, record.tune_trial_id, record.params)
            store.set_tags(run_id, {"relogged": "true", "full_budget": str(record.full_budget).lower(),
                                    EPOCHS_DONE: record.epochs_done, "trial_state": outcome.state,
                                    "end_reason": outcome.reason})
            store.log_metrics(run_id, _record_metrics(record), record.epochs_done)
            checkpoint = find_checkpoint(study, record)
            if checkpoint:
                store.set_tags(run_id, {CHECKPOINT: checkpoint})
                store.log_checkpoint(run_id, checkpoint)
            store.client.set_terminated(run_id, status)
            created += 1
        else:
            run_id = run.info.run_id
            # Metrics a dead store missed, or whose latest value is an earlier epoch's: the final
            # value from the Optuna record, logged at the last epoch so that it becomes the latest.
            stale = {k: v for k, v in _record_metrics(record).items()
                     if k not in run.data.metrics
                     or not math.isclose(run.data.metrics[k], v, rel_tol=1e-9, abs_tol=1e-12)}
            if stale:
                store.log_metrics(run_id, stale, record.epochs_done)
            if not any(a.path == CHECKPOINT_ARTIFACTS for a in _safe_list(store, run_id)):
                checkpoint = find_checkpoint(study, record, tagged=run.data.tags.get(CHECKPOINT))
                if checkpoint:
                    store.log_checkpoint(run_id, checkpoint)
            if run.info.status == "RUNNING":
                store.set_tags(run_id, {"trial_state": outcome.state, "end_reason": outcome.reason})
                store.client.set_terminated(run_id, status)
            updated += 1
        run_ids[record.number] = run_id
        store.set_tags(run_id, {"pareto": str(record.pareto).lower(),
                                "pareto_rank": "none" if record.pareto_rank is None else record.pareto_rank,
                                "pareto_eligible": str(record.pareto_rank is not None).lower()})
    summary = summarise(records, objectives, is_bounded)
    metrics = {
        "hypervolume": summary.hypervolume, "hypervolume_normalised": summary.hypervolume_normalised,
        "pareto_front_size": float(len(summary.front)), "trials": float(len(records)),
        "trials_full_budget": float(len(summary.eligible)),
        "trials_failed": float(sum(1 for r in records if r.state == "FAIL")),
    }
    store.log_metrics(parent_id, metrics, len(summary.eligible))
    store.set_tags(parent_id, {
        "hv_reference": json.dumps(dict(zip([m for m, _ in objectives], map(float, summary.reference)))),
        "hv_reference_rule": REFERENCE_RULE,
        "pareto_trials": ",".join(str(r.number) for r in summary.front),
    })
    with tempfile.TemporaryDirectory(prefix="lorsp-pareto-") as tmp:
        rows = trial_rows(records, objectives)
        for row in rows:
            row["mlflow_run_id"] = run_ids.get(row["trial"])
        files = write_table([r for r in rows if r["pareto"]], tmp, "front") if summary.front else []
        files += write_table(rows, tmp, "trials") if rows else []
        if summary.eligible:
            files.append(plot_front(records, objectives, Path(tmp) / "front.png",
                                    title=f"{study.name}: Pareto front (validation)"))
            if len({r.params.get("method") for r in summary.eligible} - {None}) > 1:
                # Several methods in one study: each its own front on the same axes (LoRSP's
                # readings apart when the study balances them as cells of their own).
                by = ["method", *[k for k, knob in study.space.items() if knob.balanced and k != "method"]]
                files.append(plot_fronts_by(records, objectives, by, Path(tmp) / "front_by_method.png",
                                            title=f"{study.name}: one front per method (validation)"))
        for file in files:
            store.client.log_artifact(parent_id, str(file), "pareto")
    store.client.set_terminated(parent_id, "FINISHED")
    mark_closed(parent_id)
    return {"uri": store.uri, "experiment_id": store.experiment_id, "parent_run_id": parent_id,
            "created": created, "updated": updated, "front": [r.number for r in summary.front],
            "hypervolume": summary.hypervolume, "reference": summary.reference.tolist()}


def _safe_list(store: Store, run_id: str) -> list[Any]:
    try:
        return list(store.client.list_artifacts(run_id))
    except Exception:
        return []


def _record_metrics(record: TrialRecord) -> dict[str, float]:
    out = {k: float(v) for k, v in record.values.items() if is_number(v)}
    out[EPOCHS_DONE] = float(record.epochs_done)
    return out

