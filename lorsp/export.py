"""`python -m lorsp.export`: write chosen prompts of a stored study as self-describing folders.

The command chooses the trials (the Pareto front, the best by one metric, or the trial of one
MLflow run), fetches each one's weights, config and gallery (:mod:`lorsp.tracking.files`: the
trial's MLflow run, else its Ray checkpoint folder), writes them in the export format
(:mod:`lorsp.bundle`, which `lorsp.load` reads back) and, with `--register`, registers each as an
MLflow pyfunc model (:mod:`lorsp.pyfunc`). See :mod:`lorsp.bundle` for the folder's layout.

A study name goes down and never comes back up: :mod:`lorsp.search` opens the stored study and its
trials, :mod:`lorsp.tracking` its MLflow experiment and runs, :mod:`lorsp.layout` its checkpoint
folders. Imports neither Ray nor MLflow unless a command needs them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lorsp.bundle import (  # noqa: F401 (the format's names, re-exported for the export's importers)
    BACKBONE_FILE,
    FORMAT,
    MANIFEST,
    META_FILE,
    PROMPT_FILE,
    load_exported,
    versions,
    write_manifest,
    write_trial,
)
from lorsp.config import ConfigError, StudyConfig, stored_study
from lorsp.metrics import METRICS, selection_error
from lorsp.tracking.files import fetch_gallery, fetch_weights, open_tracking
from lorsp.uris import redact, scrub

if TYPE_CHECKING:
    from lorsp.pareto import TrialRecord


# ---------------------------------------------------------------- choosing trials
def choose(records: list[Any], study: StudyConfig, *, pareto: bool = False, best: str | None = None,
           run_trial: int | None = None) -> list[Any]:
    """The trials to export: the Pareto front, the best by one metric, or one trial by number."""
    if run_trial is not None:
        chosen = [r for r in records if r.number == run_trial]
        if not chosen:
            raise ConfigError(f"trial {run_trial} is not in study '{study.name}'")
        return chosen
    eligible = [r for r in records if r.pareto_rank is not None]
    if not eligible:
        raise ConfigError(f"study '{study.name}' has no trial that ran its full budget; nothing to export")
    if pareto:
        return sorted((r for r in eligible if r.pareto), key=lambda r: r.number)
    assert best is not None
    problem = selection_error(best, "--best")
    if problem:
        raise ConfigError(problem)
    modes = {o.metric: o.mode for o in study.objectives}
    mode = modes.get(best, METRICS[best].mode)
    scored = [r for r in eligible if isinstance(r.values.get(best), (int, float))]
    if not scored:
        raise ConfigError(f"--best {best}: no full-budget trial recorded {best}")
    ranked = sorted(scored, key=lambda r: (-r.values[best] if mode == "max" else r.values[best], r.number))
    return ranked[:1]


# ---------------------------------------------------------------- writing one trial
def export_trial(study: StudyConfig, record: TrialRecord, out: Path, *, run: Any | None = None,
                 store: Any | None = None, include_backbone: bool = False) -> dict[str, Any]:
    """Fetch one trial's files and write its folder under `out`; returns its manifest row."""
    with tempfile.TemporaryDirectory(prefix="lorsp-export-") as tmp:
        source, weights, config_text = fetch_weights(study, record, run, store, Path(tmp))
        gallery = fetch_gallery(study, record, run, store, Path(tmp))
        config = stored_study(yaml.safe_load(config_text)) if config_text else study.with_params(record.params)
        provenance = {
            "study": study.name, "trial": record.number, "tune_trial_id": record.tune_trial_id,
            "mlflow_run_id": run.info.run_id if run is not None else None,
            "tracking_uri": redact(store.uri) if store is not None and run is not None else None,
            "weights_from": source,
        }
        return write_trial(out / f"trial-{record.number}", config, record, weights, gallery, provenance,
                           include_backbone=include_backbone)


# ---------------------------------------------------------------- MLflow model registry
def register(store: Any, study: StudyConfig, folder: Path, run: Any | None, parent_id: str | None,
             model_name: str) -> str:
    """Log the exported trial as an MLflow pyfunc model in its trial run and register it.

    Goes through an explicit MlflowClient (no fluent API): the process-wide tracking/registry URIs
    stay untouched and the trial run is not reopened, so its end state (KILLED stays KILLED) is
    kept. Returns the new model version.
    """
    import mlflow.pyfunc
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
    from mlflow.types import Schema, TensorSpec

    import lorsp

    meta = json.loads((folder / META_FILE).read_text())
    size, classes = int(meta["image_size"]), int(meta["num_classes"])
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]))
    requirements = [f"{n}=={v.split('+')[0]}" for n, v in versions().items() if n != "lorsp"]
    requirements += ["numpy", "pyyaml", "pydantic", f"mlflow=={metadata.version('mlflow')}"]
    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    if run is not None:
        run_id = run.info.run_id
    else:  # the trial was never recorded: give the model a run of its own under the study
        tags = {"mlflow.parentRunId": parent_id} if parent_id else {}
        run_id = client.create_run(store.experiment_id, tags=tags, run_name=f"export-trial-{meta['trial']}").info.run_id
        client.set_terminated(run_id, "FINISHED")
    artifact_path = f"pyfunc-{model_name}"
    with tempfile.TemporaryDirectory(prefix="lorsp-pyfunc-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(type hints|input example|input_example).*")
        code = Path(lorsp.__file__).parent / "pyfunc.py"  # loaded by path: models from code
        local = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path=str(local), python_model=str(code), artifacts={"export": str(folder)},
            code_paths=[str(Path(lorsp.__file__).parent)], signature=signature, pip_requirements=requirements,
        )
        client.log_artifacts(run_id, str(local), artifact_path)
    try:
        client.create_registered_model(model_name, description=f"lorsp prompts of study '{study.name}'")
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(
        model_name, source=source, run_id=run_id,
        tags={"study": study.name, "trial": str(meta["trial"]), "method": meta["method"]},
        description=f"trial {meta['trial']} of study '{study.name}'",
    )
    return str(version.version)


# ---------------------------------------------------------------- CLI
def export(name: str, out: str | Path, *, pareto: bool = False, run_id: str | None = None, best: str | None = None,
           register_as: str | None = None, storage: str | None = None, root: str | None = None,
           tracking: str | None = None, include_backbone: bool = False) -> list[dict[str, Any]]:
    """Export the chosen trials of a stored study; returns the manifest rows written."""
    from lorsp.search import open_stored_study, trial_records

    if sum(bool(x) for x in (pareto, run_id, best)) != 1:
        raise ConfigError("choose exactly one of --pareto, --run-id ID, --best METRIC")
    if best and selection_error(best, "--best"):
        raise ConfigError(selection_error(best, "--best"))
    study, opened, _ = open_stored_study(name, storage, root)
    records = trial_records(study, opened)
    if not records:
        raise ConfigError(f"study '{name}' has no trials; run it with python -m lorsp.tune")
    store, runs, parent_id = open_tracking(study, tracking, required=bool(run_id or register_as))
    run_trial = None
    if run_id:
        run_trial = _trial_of_run(store, study, run_id)
    chosen = choose(records, study, pareto=pareto, best=best, run_trial=run_trial)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for record in chosen:
        run = runs.get(record.number)
        row = export_trial(study, record, out, run=run, store=store, include_backbone=include_backbone)
        if register_as:
            row["registered_model"] = register_as
            row["registered_version"] = register(store, study, Path(row["path"]), run, parent_id, register_as)
        rows.append(row)
    write_manifest(out, rows)
    return rows


def _trial_of_run(store: Any, study: StudyConfig, run_id: str) -> int:
    from lorsp.tracking import OPTUNA_TRIAL, STUDY

    try:
        run = store.client.get_run(run_id)
    except Exception as err:
        reason = str(err).splitlines()[0][:120]
        raise ConfigError(f"--run-id {run_id}: no such MLflow run in {redact(store.uri)} "
                          f"({scrub(reason, store.uri)})") from None
    number = run.data.tags.get(OPTUNA_TRIAL, "")
    if run.data.tags.get(STUDY) != study.name or not number.isdigit():
        raise ConfigError(f"--run-id {run_id}: not a trial run of study '{study.name}' "
                          "(pick a child run of the study's parent run)")
    return int(number)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.export",
                                     description="Export prompts of a stored study for inference (lorsp.load).")
    parser.add_argument("--name", required=True, help="study name")
    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--pareto", action="store_true", help="every Pareto-optimal trial")
    pick.add_argument("--run-id", help="the trial of this MLflow child run")
    pick.add_argument("--best", metavar="METRIC", help="the full-budget trial best in METRIC (e.g. val_acc)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--register", metavar="MODEL_NAME", help="also log an MLflow pyfunc model and register it")
    parser.add_argument("--include-backbone", action="store_true",
                        help="save the backbone weights even when they can be rebuilt from the hub / checkpoint")
    parser.add_argument("--storage", help="Optuna RDB URI (default: sqlite ROOT/optuna.db)")
    parser.add_argument("--root", help="folder of the embedded stores (default lorsp-runs)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's, else sqlite ROOT/mlflow.db)")
    args = parser.parse_args(argv)
    try:
        rows = export(args.name, args.out, pareto=args.pareto, run_id=args.run_id, best=args.best,
                      register_as=args.register, storage=args.storage, root=args.root, tracking=args.tracking_uri,
                      include_backbone=args.include_backbone)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for row in rows:
        registered = row.get("registered_version")
        extra = f"  registered {row['registered_model']} v{registered}" if registered else ""
        print(f"trial {row['trial']}: {row['path']}  val_acc {row.get('val_acc')}  "
              f"test_acc {row.get('test_acc')}{extra}")
    print(f"manifest: {Path(args.out) / (MANIFEST + '.parquet')} (+ .csv); load one with lorsp.load(PATH)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
