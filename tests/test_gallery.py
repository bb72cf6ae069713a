"""Pictures of a prompt (lorsp.gallery): which images, what the spike maps count, and that training
leaves the picture in every checkpoint a trial can end on. Real prompters, real training, real PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch

from lorsp.config import load_study
from lorsp.gallery import GALLERY_FILE, MAX_IMAGES, capture, gallery_indices, gallery_png, side_by_side
from lorsp.prompts import create_prompter
from lorsp.train import PROMPT_FILE, train_loop
from tests.conftest import QUICKSTART

L = 12
FAST = ["train.epochs=1", "data.max_train=96", "data.batch_size=32", "data.image_size=8",
        "backbone.model=vit_micro_patch4_16", "backbone.pretrained=false"]


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, L, L, generator=torch.Generator().manual_seed(0))


def test_gallery_images_are_the_first_of_each_class_in_class_order():
    labels = torch.tensor([3, 1, 3, 0, 1, 2, 9, 4, 5, 6, 7, 8])
    assert gallery_indices(labels) == [3, 1, 5, 0, 7, 8, 9, 10]  # classes 0..7: 8 images, not 9
    assert gallery_indices(labels, 3) == [3, 1, 5]
    assert len(gallery_indices(labels)) == MAX_IMAGES


def test_lorsp_spike_counts_are_the_spikes_its_firing_rate_counts():
    torch.manual_seed(1)
    prompter = create_prompter("lorsp", L, rank=2, factors=2, timesteps=5, threshold=0.3)
    with torch.no_grad():
        prompter.B.normal_(0, 1.0)
        prompter.beta.normal_(0, 1.0)
    x = _images()
    prompter.prompt(x)
    rate = float(prompter.stats()["firing_rate"])
    counts = prompter.spike_counts(x)
    assert counts.shape == x.shape and counts.min() >= 0 and counts.max() <= 5  # one pair per pixel fires ≤ T
    neurons = 2 * 2 * x.numel()  # both populations of every factor
    assert float(counts.sum()) / (neurons * 5) == pytest.approx(rate, rel=1e-6)
    assert float(prompter.stats()["firing_rate"]) == rate  # counting did not overwrite the statistics
    reference = create_prompter("lorsp", L, rank=2, factors=2, timesteps=5, threshold=0.3, reference=True)
    reference.load_state_dict(prompter.state_dict())
    assert torch.equal(reference.spike_counts(x), counts)  # SpikingJelly's neurons count the same spikes


def test_factor_gates_and_static_prompts_count_their_own_neurons():
    torch.manual_seed(2)
    factor = create_prompter("lorsp", L, rank=2, factors=3, timesteps=4, threshold=0.3, lorsp_mode="factor")
    with torch.no_grad():
        factor.gate_weight.normal_(0, 4.0)
        factor.gate_bias.normal_(0, 1.0)
    x = _images()
    gates = factor.spike_counts(x)
    assert gates.shape == (4, 3, 3)  # [N, K, channels]
    assert torch.equal(gates, (factor.gates(x).abs() * 4).round()) and gates.sum() > 0  # only one of ± fires
    nvpt = create_prompter("spike_nvpt", L, timesteps=4, threshold=0.5)
    spikes = nvpt.spike_counts(x)
    assert spikes.shape == x.shape and torch.equal(spikes[0], spikes[-1]) and spikes.sum() > 0
    for method in ("none", "pad", "lorvp"):
        assert create_prompter(method, L).spike_counts(x) is None


def test_training_draws_the_gallery_into_the_checkpoints_a_trial_can_end_on(tmp_path: Path):
    # ASHA with grace 2 and factor 2 over 4 epochs may stop a trial after epoch 2 (or end it after 4).
    asha = "search.scheduler={type: asha, grace_period: 2}"
    study = load_study(QUICKSTART, [*FAST, "train.epochs=4", asha]).resolved()
    assert study.search.scheduler.stop_epochs(4) == (2, 4)
    drawn: dict[int, bool] = {}

    def report(metrics, folder):
        drawn[int(metrics["epoch"])] = (Path(folder) / GALLERY_FILE).is_file()

    train_loop(study, report, out_dir=tmp_path / "out", verbose=False)
    assert drawn == {1: False, 2: True, 3: False, 4: True}
    out = tmp_path / "out"
    assert (out / PROMPT_FILE).is_file() and (out / GALLERY_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("grace", "factor", "epochs"), [(1, 2, 2), (2, 4, 20), (1, 3, 10), (3, 3.5, 30), (5, 2, 4)])
def test_scheduler_stop_epochs_are_ray_ashas_rungs(grace: int, factor: float, epochs: int):
    from lorsp.tune import _scheduler

    study = load_study(QUICKSTART, [f"train.epochs={epochs}", "search.scheduler={type: asha, grace_period: "
                                    f"{grace}, reduction_factor: {factor}}}"])
    rungs = sorted({math.ceil(milestone) for milestone, _ in _scheduler(study)._brackets[0]._rungs})
    assert list(study.search.scheduler.stop_epochs(epochs)) == rungs


def test_gallery_shows_one_row_per_class_and_the_front_puts_them_side_by_side(tmp_path: Path):
    from lorsp.data import load_splits_for
    from lorsp.model import build_model

    pictures = []
    for method in ("lorsp", "pad"):
        study = load_study(QUICKSTART, [*FAST, f"prompt.method={method}"]).resolved()
        splits = load_splits_for(study.data)
        model = build_model(study, splits.num_classes).train()
        panels = capture(model, splits.val, study.data.image_size, "cpu")
        assert model.training  # the model's mode is given back
        assert [int(splits.val.labels[i]) for i in panels.indices] == list(range(8))
        assert panels.images.shape == panels.prompts.shape == (8, 3, 8, 8)
        assert (panels.spikes is not None) == (method == "lorsp")
        png = tmp_path / f"{method}.png"
        png.write_bytes(gallery_png(model, splits.val, study.data.image_size, "cpu", method, splits.class_names))
        pictures.append((method, png))
    widths = [mpimg.imread(str(p)).shape[1] for _, p in pictures]
    assert widths[0] > widths[1]  # the spiking method has a fourth column: its spikes
    front = side_by_side(pictures, tmp_path / "front.png", title="front")
    assert mpimg.imread(str(front)).shape[1] >= sum(widths)
