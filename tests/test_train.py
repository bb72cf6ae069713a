"""One training run from the command line: outputs, resume, and a clear error when the loss blows up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorsp.config import load_study
from lorsp.train import train_loop
from tests.conftest import QUICKSTART, REPO

FAST = ["train.epochs=2", "data.max_train=160", "data.batch_size=32"]


def test_cli_writes_metrics_prompt_and_config(tmp_path: Path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lorsp.train", "--config", str(QUICKSTART), "--out", str(out),
           *[a for kv in FAST for a in ("--set", kv)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch 2/2" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())["final"]
    for key in ("val_acc", "test_acc", "prompt_density", "firing_rate", "prompt_params", "trainable_params",
                "epochs", "images_per_s"):
        assert key in metrics, key
    assert 0.0 <= metrics["val_acc"] <= 1.0 and metrics["epochs"] == 2
    study = load_study(out / "config.yaml")
    state = load_file(str(out / "prompt.safetensors"))
    assert "head.weight" in state and any(k.startswith("prompter.") for k in state)
    assert not any(k.startswith("backbone.") for k in state)
    assert sum(v.numel() for v in state.values()) == metrics["trainable_params"]
    assert study.prompt.method == "lorsp"


def test_resume_continues_after_the_checkpoint_epoch(tmp_path: Path):
    study = load_study(QUICKSTART, [*FAST, "train.epochs=3"]).resolved()
    saved: dict[int, Path] = {}
    reported: list[float] = []

    def keep(metrics, folder):
        reported.append(metrics["epoch"])
        if folder:
            dest = tmp_path / f"ckpt{int(metrics['epoch'])}"
            dest.mkdir()
            for f in Path(folder).iterdir():
                dest.joinpath(f.name).write_bytes(f.read_bytes())
            saved[int(metrics["epoch"])] = dest

    full = train_loop(study, keep, verbose=False)
    assert reported == [1.0, 2.0, 3.0]
    resumed_epochs: list[float] = []
    resumed = train_loop(study, lambda m, f: resumed_epochs.append(m["epoch"]), resume_from=saved[1], verbose=False)
    assert resumed_epochs == [2.0, 3.0]  # did not restart from zero
    # Same seeds, same data order: resuming reproduces the uninterrupted run.
    assert resumed["val_acc"] == pytest.approx(full["val_acc"], abs=1e-6)


def test_diverging_loss_is_a_clear_error(tmp_path: Path):
    cmd = [sys.executable, "-m", "lorsp.train", "--config", str(QUICKSTART), "--out", str(tmp_path / "nan"),
           "--set", "train.epochs=1", "--set", "data.max_train=160", "--set", "data.batch_size=32",
           "--set", "prompt.method=none",
           "--set", "train.lr=1e38", "--set", "train.optimizer=sgd"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "loss became" in proc.stderr and "train.lr" in proc.stderr


def test_trained_lorsp_prompt_is_sparse():
    # A threshold the factors reach within 3 short epochs (the quickstart's 0.5 needs longer runs).
    study = load_study(QUICKSTART, [*FAST, "train.epochs=3", "prompt.threshold=0.1"]).resolved()
    metrics = train_loop(study, verbose=False)
    assert 0.0 < metrics["prompt_density"] < 1.0
    assert 0.0 < metrics["firing_rate"] < 1.0
    torch.testing.assert_close(metrics["prompt_params"], float(study.prompt.factors * (6 * 16 * study.prompt.rank + 6)))
