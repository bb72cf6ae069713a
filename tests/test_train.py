"""One training run from the command line: outputs, resume, and a clear error when the loss blows up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorsp.config import StudyConfig, load_study
from lorsp.data import ImageSplit, Splits, load_splits_for
from lorsp.model import PromptedClassifier, build_model
from lorsp.train import PROMPT_FILE, main, train_loop
from tests.conftest import QUICKSTART

FAST = ["train.epochs=2", "data.max_train=160", "data.batch_size=32"]
# Digits at their stored 8 px (no resize, so a batch is exactly stored_uint8 / 255) on a random-init
# ViT-Micro; 96 training images = 3 full batches of 32, so an epoch shows every training image once.
TINY = ["train.epochs=1", "data.max_train=96", "data.batch_size=32", "data.image_size=8",
        "backbone.model=vit_micro_patch4_16", "backbone.pretrained=false"]


def test_cli_writes_metrics_prompt_and_config(tmp_path: Path, capsys):
    out = tmp_path / "run"
    # In-process: `python -m lorsp.train` is `sys.exit(main())`; a subprocess would only add seconds
    # of imports.
    code = main(["--config", str(QUICKSTART), "--out", str(out), *[a for kv in FAST for a in ("--set", kv)]])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "epoch 2/2" in printed.out
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
    assert not list(out.glob("epoch-*")) and not list(out.glob(".epoch-*"))  # a finished run keeps only itself


def test_a_run_keeps_its_last_finished_epoch_whole(tmp_path: Path):
    from lorsp.train import epoch_folders, keep_last_epoch

    study = load_study(QUICKSTART, [*FAST, "train.epochs=3"]).resolved()
    seen: list[list[str]] = []
    keep = keep_last_epoch(tmp_path / "run")

    def report(metrics, folder):
        keep(metrics, folder)
        seen.append([p.name for p in epoch_folders(tmp_path / "run")])

    train_loop(study, report, verbose=False)
    assert seen == [["epoch-0001"], ["epoch-0002"], ["epoch-0003"]]
    assert (tmp_path / "run" / "epoch-0003" / "state.pt").is_file()
    resumed: list[float] = []
    train_loop(load_study(QUICKSTART, [*FAST, "train.epochs=4"]).resolved(), lambda m, f: resumed.append(m["epoch"]),
               resume_from=tmp_path / "run" / "epoch-0003", verbose=False)
    assert resumed == [4.0]


@pytest.mark.slow
def test_a_stop_signal_to_the_runs_group_leaves_a_command_that_continues_it(tmp_path: Path):
    """A cluster stops a job with SIGTERM to its whole process group: the run says where it got to
    and how to continue (exit 143), and that command finishes it in the same folder."""
    import os
    import shlex
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "run"
    args = ["--config", str(QUICKSTART), "--out", str(out), "--quiet",
            *[a for kv in [*FAST, "train.epochs=40"] for a in ("--set", kv)]]
    run = subprocess.Popen([sys.executable, "-m", "lorsp.train", *args], cwd=REPO, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("epoch-*")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGTERM)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted by SIGTERM after epoch-00")
    assert "; continue with: python -m lorsp.train " in line
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[-2] == "--resume" and Path(command[-1]).parent == out
    done = int(Path(command[-1]).name.removeprefix("epoch-"))
    again = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [int(h["epoch"]) for h in history] == list(range(1, 41)) and done < 40
    assert not list(out.glob("epoch-*"))


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


def test_diverging_loss_is_a_clear_error(tmp_path: Path, capsys):
    code = main(["--config", str(QUICKSTART), "--out", str(tmp_path / "nan"),
                 "--set", "train.epochs=1", "--set", "data.max_train=160", "--set", "data.batch_size=32",
                 "--set", "prompt.method=none", "--set", "train.lr=1e38", "--set", "train.optimizer=sgd"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert err.startswith("error: ") and "loss became" in err and "train.lr" in err


def test_trained_lorsp_prompt_is_sparse():
    # A threshold the factors reach within 3 short epochs (the quickstart's 0.5 needs longer runs).
    study = load_study(QUICKSTART, [*FAST, "train.epochs=3", "prompt.threshold=0.1"]).resolved()
    metrics = train_loop(study, verbose=False)
    assert 0.0 < metrics["prompt_density"] < 1.0
    assert 0.0 < metrics["firing_rate"] < 1.0
    torch.testing.assert_close(metrics["prompt_params"], float(study.prompt.factors * (6 * 16 * study.prompt.rank + 6)))


def _tiny_splits(study: StudyConfig) -> Splits:
    return load_splits_for(study.data)


def _pixels(split: ImageSplit) -> torch.Tensor:
    """What the model must see for un-augmented images stored at the model's size."""
    return split.images.float() / 255.0


def _train_watching(study: StudyConfig, **kwargs) -> dict:
    """Run the real train_loop and record every batch the model is called on, by mode.

    A global forward pre-hook sees the PromptedClassifier that train_loop builds inside itself;
    it also keeps the head's weights at the first call, i.e. the initialisation.
    """
    seen: dict = {"train": [], "eval": [], "init_head": None}

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, PromptedClassifier):
            if seen["init_head"] is None:
                seen["init_head"] = module.head.weight.detach().clone()
            seen["train" if module.training else "eval"].append(args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        seen["metrics"] = train_loop(study, verbose=False, **kwargs)
    finally:
        handle.remove()
    seen["train"] = torch.cat(seen["train"])
    seen["eval"] = torch.cat(seen["eval"])
    return seen


def _rows(x: torch.Tensor) -> list[bytes]:
    return [img.numpy().tobytes() for img in x]


def test_validation_and_test_batches_are_never_augmented():
    study = load_study(QUICKSTART, [*TINY, "data.augment=crop_flip"]).resolved()
    splits = _tiny_splits(study)
    seen = _train_watching(study, splits=splits)
    # one epoch: validation, then (last epoch) test, each exactly as stored and in stored order
    assert torch.equal(seen["eval"], torch.cat([_pixels(splits.val), _pixels(splits.test)]))
    # the hook does watch augmented batches: most training images are shifted or mirrored copies
    stored = set(_rows(_pixels(splits.train)))
    trained = _rows(seen["train"])
    assert len(trained) == len(splits.train) == 96
    assert sum(row not in stored for row in trained) > len(trained) // 2


def test_val_acc_is_measured_on_the_validation_split_and_test_acc_on_the_test_split(tmp_path: Path):
    """Test labels are all wrong (shifted by one class), validation labels right: the two accuracies
    must each equal an independent evaluation of the trained model on its own split."""
    study = load_study(QUICKSTART, [*TINY, "train.epochs=3", "data.max_train=480"]).resolved()
    splits = _tiny_splits(study)
    wrong = ImageSplit(splits.test.images, (splits.test.labels + 1) % splits.num_classes)
    splits = Splits(splits.train, splits.val, wrong, splits.num_classes, splits.class_names, splits.source)
    metrics = train_loop(study, splits=splits, out_dir=tmp_path, verbose=False)
    torch.manual_seed(study.train.seed)  # the same random backbone train_loop built (it is not saved)
    net = build_model(study, splits.num_classes)
    net.load_trainable_state_dict(load_file(str(tmp_path / PROMPT_FILE)))
    net.eval()
    with torch.no_grad():
        val_acc = (net(_pixels(splits.val)).argmax(1) == splits.val.labels).double().mean().item()
        test_acc = (net(_pixels(splits.test)).argmax(1) == splits.test.labels).double().mean().item()
    assert val_acc > test_acc + 0.1  # the splits are told apart by accuracy
    assert metrics["val_acc"] == pytest.approx(val_acc, abs=1e-9)
    assert metrics["test_acc"] == pytest.approx(test_acc, abs=1e-9)


def test_train_seed_owns_order_and_init_data_seed_owns_the_splits():
    base = load_study(QUICKSTART, TINY).resolved()
    assert base.data.augment == "none"
    runs = {
        (data_seed, train_seed): _train_watching(
            load_study(QUICKSTART, [*TINY, f"data.seed={data_seed}", f"train.seed={train_seed}"]).resolved()
        )
        for data_seed, train_seed in ((0, 0), (0, 1), (1, 0))
    }
    a, b, c = runs[0, 0], runs[0, 1], runs[1, 0]
    # a new train.seed: same validation and test images, same training images in another order, new init
    assert torch.equal(a["eval"], b["eval"])
    assert sorted(_rows(a["train"])) == sorted(_rows(b["train"]))
    assert not torch.equal(a["train"], b["train"])
    assert not torch.equal(a["init_head"], b["init_head"])
    # a new data.seed: other splits, and nothing else (the same train.seed gives the same init)
    assert not torch.equal(a["eval"], c["eval"])
    assert sorted(_rows(a["train"])) != sorted(_rows(c["train"]))
    assert torch.equal(a["init_head"], c["init_head"])


def test_lorsp_train_does_not_import_ray():
    """Ray is imported only by a run that streams its data: a plain run works where Ray is not installed."""
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run([sys.executable, "-c", "import sys, lorsp.train; sys.exit(int('ray' in sys.modules))"],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:] or "importing lorsp.train imported ray"


@pytest.mark.slow
def test_the_linear_probe_at_its_own_default_is_not_handicapped(tmp_path: Path):
    """The probe's single run at its declared default lr (the study file's `per_method` entry) is at
    least as good as its best at the prompts' learning rates: a baseline is not handicapped by a
    range it shares with the methods it is compared with."""

    def val_acc(*overrides: str) -> float:
        out = tmp_path / "-".join(overrides or ("default",))
        sets = [x for o in ["prompt.method=none", *overrides] for x in ("--set", o)]
        assert main(["--config", str(QUICKSTART), *sets, "--out", str(out)]) == 0
        return json.loads((out / "metrics.json").read_text())["final"]["val_acc"]

    shared = max(val_acc(f"train.lr={lr}") for lr in (0.05, 0.1, 0.2))
    assert val_acc() >= shared
