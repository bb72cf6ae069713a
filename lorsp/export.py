"""`python -m lorsp.export`: write chosen prompts as self-describing folders; `lorsp.load` reads them.

One folder per exported trial::

    OUT/trial-<n>/prompt.safetensors     the trainable state: prompt and linear head
    OUT/trial-<n>/backbone.safetensors   only when the backbone cannot be rebuilt from its source
                                         (random init, `pretrained: false`), or with --include-backbone
    OUT/trial-<n>/lorsp.json             backbone (timm name, kwargs, weights source), method, the full
                                         resolved study config, metrics, MLflow run id
    OUT/trial-<n>/gallery.png            the prompt on a few fixed validation images (lorsp.gallery),
                                         when the trial drew one (it does after its last epoch)
    OUT/manifest.parquet, manifest.csv   one row per exported prompt

The weights come from the trial's MLflow run (artifact `checkpoint/prompt.safetensors`), or, when
the run or its artifact is missing, from the trial's Ray Train checkpoint folder; the gallery
likewise (artifact `prompts/gallery.png`, else the checkpoint folder's `gallery.png`).

Loading (`lorsp.load(OUT/trial-<n>)`) builds the model with :func:`lorsp.model.build_model` and
returns it in eval mode: input float32 images [N, 3, L, L] in [0, 1] (the backbone's
normalisation is inside the model), output logits [N, num_classes]. This module imports neither
Ray nor MLflow unless a command needs them, so `lorsp.load` works where only torch and timm are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from lorsp.config import ConfigError, StudyConfig, stored_study
from lorsp.gallery import GALLERY_FILE
from lorsp.metrics import METRICS, selection_error
from lorsp.uris import redact, scrub

FORMAT = "lorsp-export/1"
META_FILE = "lorsp.json"
PROMPT_FILE = "prompt.safetensors"
BACKBONE_FILE = "backbone.safetensors"
MANIFEST = "manifest"


# ---------------------------------------------------------------- loading (no Ray, no MLflow)
def load_exported(path: str | Path, device: str | Any = "cpu") -> Any:
    """An exported prompt as a ready `PromptedClassifier` in eval mode.

    `path` is a trial folder (holding lorsp.json) or an export folder with exactly one trial.
    Every file is read and checked before the model is built, so a truncated copy or a damaged
    download fails as one :class:`ConfigError` line that names the file and the command that
    writes it again, not as a decoder's exception from deep inside safetensors or json.
    """
    import torch

    from lorsp.model import build_model

    folder = _trial_folder(Path(path))
    meta = _read_meta(folder)
    try:
        study = stored_study(meta["hyperparameters"])
        num_classes = int(meta["num_classes"])
    except (KeyError, TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        reason = f"no '{err.args[0]}' entry" if isinstance(err, KeyError) else str(err).splitlines()[0][:160]
        raise _damaged(folder / META_FILE, "not a complete lorsp export description", reason, meta) from None
    backbone_file = folder / BACKBONE_FILE
    expects_backbone = (meta.get("files") or {}).get("backbone") == BACKBONE_FILE
    if expects_backbone and not backbone_file.is_file():
        # Building from the source instead would silently give other (e.g. freshly random) weights.
        raise _damaged(backbone_file, "missing", f"{META_FILE} lists it", meta)
    backbone_state = _read_weights(backbone_file, meta) if backbone_file.is_file() else None
    prompt_state = _read_weights(folder / PROMPT_FILE, meta)
    if backbone_state is not None:
        # The saved weights replace whatever the source would give; don't touch the hub or a checkpoint path.
        backbone_cfg = study.backbone.model_copy(update={"pretrained": False, "checkpoint": None})
        study = study.model_copy(update={"backbone": backbone_cfg})
    model = build_model(study, num_classes)
    if backbone_state is not None:
        missing, unexpected = model.backbone.load_state_dict(backbone_state, strict=False)
        if unexpected or missing:
            raise ConfigError(f"{backbone_file}: does not fit {study.backbone.model} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    try:
        model.load_trainable_state_dict(prompt_state)
    except ValueError as err:
        raise _damaged(folder / PROMPT_FILE, f"does not fit the model {META_FILE} describes", str(err)[:160],
                       meta) from None
    model.eval()
    model.requires_grad_(False)
    return model.to(torch.device(device))


def _read_meta(folder: Path) -> dict[str, Any]:
    file = folder / META_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(file, "truncated or corrupt", str(err).splitlines()[0][:160], None) from None
    if not isinstance(meta, dict):
        raise _damaged(file, "truncated or corrupt", f"a JSON {type(meta).__name__}, not an object", None)
    return meta


def _read_weights(file: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise _damaged(file, "missing", "every export has one", meta)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise _damaged(file, "truncated or corrupt", str(err).splitlines()[0][:160], meta) from None


def _damaged(file: Path, what: str, reason: str, meta: dict[str, Any] | None) -> ConfigError:
    """`FILE: what (reason); re-export it with <the command that wrote it>` as one line."""
    out = file.parent.parent
    study = str(meta.get("study") or "STUDY") if meta else "STUDY"
    run_id = meta.get("mlflow_run_id") if meta else None
    if run_id:
        how = f"python -m lorsp.export --name {study} --run-id {run_id} --out {out}"
    else:
        trial = f"trial {meta.get('trial')}" if meta and meta.get("trial") is not None else "the trial"
        how = (f"python -m lorsp.export --name {study} --pareto --out {out} "
               f"(or --best METRIC / --run-id ID, whichever chose {trial})")
    return ConfigError(f"{file}: {what} ({reason}); re-export it with {how}")


def _trial_folder(path: Path) -> Path:
    if (path / META_FILE).is_file():
        return path
    if not path.exists():
        raise ConfigError(f"{path}: no such export; write one with python -m lorsp.export")
    found = sorted(p.parent for p in path.glob(f"*/{META_FILE}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"{path}: not a lorsp export (no {META_FILE}); pass the folder of one exported trial")
    raise ConfigError(f"{path}: holds {len(found)} exported trials ({', '.join(p.name for p in found[:5])}); "
                      "pass one of them")


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
def export_trial(study: StudyConfig, record: Any, out: Path, *, run: Any | None = None, store: Any | None = None,
                 include_backbone: bool = False) -> dict[str, Any]:
    """Write one trial's folder under `out` and return its manifest row."""
    import torch
    from safetensors.torch import load_file, save_file

    from lorsp.model import build_model

    folder = out / f"trial-{record.number}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="lorsp-export-") as tmp:
        source, weights, config_text = _fetch_weights(study, record, run, store, Path(tmp))
        shutil.copyfile(weights, folder / PROMPT_FILE)
        gallery = fetch_gallery(study, record, run, store, Path(tmp))
        if gallery is not None:
            shutil.copyfile(gallery, folder / GALLERY_FILE)
    has_gallery = (folder / GALLERY_FILE).is_file()
    config = stored_study(yaml.safe_load(config_text)) if config_text else study.with_params(record.params)
    config = config.redacted()  # an export is made to be shared: where the study lived, never its password
    state = load_file(str(folder / PROMPT_FILE))
    if "head.weight" not in state:
        raise ConfigError(f"trial {record.number}: {PROMPT_FILE} has no head.weight; not a lorsp checkpoint")
    num_classes = int(state["head.weight"].shape[0])

    b = config.backbone
    saved_backbone = include_backbone or (not b.pretrained and not b.checkpoint)
    if saved_backbone:
        # The trial built its backbone right after torch.manual_seed(train.seed) (lorsp.train.train_loop),
        # so the same build reproduces it; saving it makes the export independent of that.
        torch.manual_seed(config.train.seed)
        model = build_model(config, num_classes)
        save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(folder / BACKBONE_FILE))
    meta = {
        "format": FORMAT,
        "study": study.name,
        "trial": record.number,
        "tune_trial_id": record.tune_trial_id,
        "mlflow_run_id": run.info.run_id if run is not None else None,
        "tracking_uri": redact(store.uri) if store is not None and run is not None else None,
        "weights_from": source,
        "method": config.prompt.method,
        "backbone": {
            "name": b.model, "kwargs": b.kwargs, "pretrained": b.pretrained, "checkpoint": b.checkpoint,
            "checkpoint_sha256": _sha256(b.checkpoint) if b.checkpoint else None,
            "source": _backbone_source(config, saved_backbone),
            "weights_file": BACKBONE_FILE if saved_backbone else None,
        },
        "num_classes": num_classes,
        "image_size": config.data.image_size,
        "input": {"shape": [-1, 3, config.data.image_size, config.data.image_size], "dtype": "float32",
                  "range": [0.0, 1.0], "note": "the backbone's mean/std normalisation is applied inside the model"},
        "output": "logits [N, num_classes]",
        "params": record.params,
        "hyperparameters": config.model_dump(mode="json"),
        "metrics": record.values,
        "full_budget": record.full_budget,
        "pareto": record.pareto,
        "pareto_rank": record.pareto_rank,
        "selection": "validation accuracy; test accuracy is reported, never used to select",
        "versions": _versions(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {"prompt": PROMPT_FILE, "backbone": BACKBONE_FILE if saved_backbone else None,
                  "gallery": GALLERY_FILE if has_gallery else None},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    row = {"trial": record.number, "path": str(folder.resolve()), "method": config.prompt.method,
           "backbone": b.model, "backbone_saved": saved_backbone, "mlflow_run_id": meta["mlflow_run_id"],
           "weights_from": source, "pareto": record.pareto, "pareto_rank": record.pareto_rank,
           "num_classes": num_classes, "image_size": config.data.image_size,
           "params": json.dumps(record.params, sort_keys=True),
           "gallery": str((folder / GALLERY_FILE).resolve()) if has_gallery else None}
    row.update({m: record.values.get(m) for m in ("val_acc", "test_acc", "prompt_density", "firing_rate",
                                                  "trainable_params", "prompt_params")})
    return row


def _fetch_weights(study: StudyConfig, record: Any, run: Any | None, store: Any | None,
                   tmp: Path) -> tuple[str, Path, str | None]:
    """(where from, prompt.safetensors path, config.yaml text or None): MLflow artifact, else checkpoint folder."""
    from lorsp.tracking import CHECKPOINT_ARTIFACTS

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if run is not None and store is not None:
        try:
            local = Path(store.client.download_artifacts(run.info.run_id, CHECKPOINT_ARTIFACTS, str(tmp)))
            if (local / PROMPT_FILE).is_file():
                config = local / "config.yaml"
                return (f"mlflow run {run.info.run_id} artifact {CHECKPOINT_ARTIFACTS}/{PROMPT_FILE}",
                        local / PROMPT_FILE, config.read_text() if config.is_file() else None)
        except Exception:
            pass  # missing artifact or unreachable store: fall back to the checkpoint folder
    found = _checkpoint_folder(study, record, run, tmp)
    if found is None:
        raise ConfigError(
            f"trial {record.number}: no weights found (no MLflow artifact {CHECKPOINT_ARTIFACTS}/{PROMPT_FILE}, "
            f"no checkpoint folder under {study.tracking.root}/ray); was the study run with lorsp.tune?"
        )
    location, folder = found
    config = folder / "config.yaml"
    return f"checkpoint {location}", folder / PROMPT_FILE, config.read_text() if config.is_file() else None


def _checkpoint_folder(study: StudyConfig, record: Any, run: Any | None, tmp: Path) -> tuple[str, Path] | None:
    """(location, local folder) of the trial's checkpoint: the run's `checkpoint_path` tag, else the
    Optuna record's, else a search of the Ray folder; recorded paths are looked up under the study's
    current root too, so a study folder that was moved or copied still has its checkpoints."""
    from lorsp.layout import checkpoint_locations, fetch_checkpoint
    from lorsp.search import CHECKPOINT

    tagged = run.data.tags.get(CHECKPOINT) if run is not None else None
    for location in checkpoint_locations(study, record, tagged):
        folder = fetch_checkpoint(location, tmp / "ckpt")
        if folder is not None and (folder / PROMPT_FILE).is_file():
            return location, folder
    return None


def fetch_gallery(study: StudyConfig, record: Any, run: Any | None, store: Any | None, tmp: Path) -> Path | None:
    """The trial's prompt gallery: MLflow artifact `prompts/gallery.png`, else its checkpoint folder's; None
    for a trial that drew none (stopped before its last epoch, or recorded before galleries existed)."""
    from lorsp.tracking import PROMPT_ARTIFACTS

    if run is not None and store is not None:
        try:
            target = tmp / "gallery"
            target.mkdir(exist_ok=True)
            local = Path(store.client.download_artifacts(run.info.run_id, f"{PROMPT_ARTIFACTS}/{GALLERY_FILE}",
                                                         str(target)))
            if local.is_file():
                return local
        except Exception:
            pass  # no such artifact or an unreachable store: look in the checkpoint folder
    found = _checkpoint_folder(study, record, run, tmp)
    if found is not None and (found[1] / GALLERY_FILE).is_file():
        return found[1] / GALLERY_FILE
    return None


def _backbone_source(config: StudyConfig, saved: bool) -> str:
    b = config.backbone
    if b.checkpoint:
        where = f"local checkpoint {b.checkpoint}"
    elif b.pretrained:
        where = f"timm pretrained weights of '{b.model}'"
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(b.model)
            hub = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or getattr(cfg, "file", None)
            if hub:
                where += f" ({hub})"
        except Exception:
            pass
    else:
        where = f"random initialisation (torch.manual_seed({config.train.seed}), pretrained: false)"
    return where + (f"; weights saved in {BACKBONE_FILE}" if saved else "")


def _sha256(path: str) -> str | None:
    file = Path(path).expanduser()
    if not file.is_file():
        return None
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for name in ("lorsp", "torch", "timm", "spikingjelly", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_manifest(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Merge `rows` into OUT/manifest.{parquet,csv} (a re-exported trial replaces its old row)."""
    from lorsp.report import write_table

    existing: list[dict[str, Any]] = []
    old = out / f"{MANIFEST}.parquet"
    if old.is_file():
        import pyarrow.parquet as pq

        fresh = {r["path"] for r in rows}
        existing = [r for r in pq.read_table(old).to_pylist()
                    if r.get("path") not in fresh and Path(r["path"]).exists()]
    merged = sorted(existing + rows, key=lambda r: (str(r.get("path"))))
    return write_table(merged, out, MANIFEST)


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
    requirements = [f"{n}=={v.split('+')[0]}" for n, v in _versions().items() if n != "lorsp"]
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


def open_tracking(study: StudyConfig, tracking: str | None, required: bool) -> tuple[Any, dict[int, Any], str | None]:
    """(store, child runs by trial number, parent run id) of the study's MLflow experiment; when the store
    cannot be reached, a warning and (None, {}, None), so the tools fall back to the checkpoint folders,
    unless `required`."""
    from lorsp.tracking import connect

    try:
        store = connect(study, tracking)
        parent = store.find_parent()
        return store, store.child_runs(), parent.info.run_id if parent else None
    except ConfigError as err:
        if required:
            raise
        print(f"warning: {err}; taking the weights from the checkpoint folders", file=sys.stderr)
        return None, {}, None


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
