"""An exported prompt's folder: its files, its `lorsp.json`, the export's manifest; written by
:func:`write_trial` (for `python -m lorsp.export`), read back by :func:`load_exported` (`lorsp.load`).

One folder per exported trial::

    OUT/trial-<n>/prompt.safetensors     the trainable state: prompt and linear head
    OUT/trial-<n>/backbone.safetensors   only when the backbone cannot be rebuilt from its source
                                         (random init, `pretrained: false`), or with --include-backbone
    OUT/trial-<n>/lorsp.json             backbone (timm name, kwargs, weights source), method, the full
                                         resolved study config, metrics, MLflow run id
    OUT/trial-<n>/gallery.png            the prompt on a few fixed validation images (lorsp.gallery),
                                         when the trial drew one (it does after its last epoch)
    OUT/manifest.parquet, manifest.csv   one row per exported prompt

Loading builds the model with :func:`lorsp.model.build_model` and returns it in eval mode: input
float32 images [N, 3, L, L] in [0, 1] (the backbone's normalisation is inside the model), output
logits [N, num_classes]. The format is this module's alone: where the weights come from (an MLflow
run, a checkpoint folder) is the exporter's business, so this module imports neither Ray, MLflow nor
Optuna, and `lorsp.load` works where only torch and timm are.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorsp.config import ConfigError, StudyConfig, stored_study
from lorsp.gallery import GALLERY_FILE

if TYPE_CHECKING:
    from lorsp.pareto import TrialRecord

FORMAT = "lorsp-export/1"
META_FILE = "lorsp.json"
PROMPT_FILE = "prompt.safetensors"
BACKBONE_FILE = "backbone.safetensors"
MANIFEST = "manifest"


# ---------------------------------------------------------------- reading
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


# ---------------------------------------------------------------- writing
def write_trial(folder: Path, config: StudyConfig, record: TrialRecord, weights: Path, gallery: Path | None,
                provenance: dict[str, Any], *, include_backbone: bool = False) -> dict[str, Any]:
    """Write one exported trial into `folder` (replacing what was there) and return its manifest row.

    `config` is the study file the trial trained with (redacted here: an export is made to be
    shared, so where the study lived, never its password); `weights` its prompt.safetensors;
    `provenance` says where it came from (study, trial, tune_trial_id, mlflow_run_id, tracking_uri,
    weights_from) and goes into lorsp.json as given.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from lorsp.model import build_model

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(weights, folder / PROMPT_FILE)
    if gallery is not None:
        shutil.copyfile(gallery, folder / GALLERY_FILE)
    has_gallery = gallery is not None
    config = config.redacted()
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
        **provenance,
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
        "versions": versions(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {"prompt": PROMPT_FILE, "backbone": BACKBONE_FILE if saved_backbone else None,
                  "gallery": GALLERY_FILE if has_gallery else None},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    row = {"trial": record.number, "path": str(folder.resolve()), "method": config.prompt.method,
           "backbone": b.model, "backbone_saved": saved_backbone, "mlflow_run_id": meta.get("mlflow_run_id"),
           "weights_from": meta.get("weights_from"), "pareto": record.pareto, "pareto_rank": record.pareto_rank,
           "num_classes": num_classes, "image_size": config.data.image_size,
           "params": json.dumps(record.params, sort_keys=True),
           "gallery": str((folder / GALLERY_FILE).resolve()) if has_gallery else None}
    row.update({m: record.values.get(m) for m in ("val_acc", "test_acc", "prompt_density", "firing_rate",
                                                  "trainable_params", "prompt_params")})
    return row


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


def versions() -> dict[str, str]:
    """Installed versions of what an export needs to load (what a registered model pins)."""
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
