"""Pictures of a trained prompt: a few fixed validation images, their prompt, the prompted image
and, for spiking methods, where the neurons fired.

Why here, beside the training loop: the picture needs the trained prompter and the images, which
only the training process holds. Drawn once at the end of training, it travels inside the last
checkpoint (``gallery.png`` beside ``prompt.safetensors``), so MLflow, exports and the Pareto tools
copy a file instead of rebuilding a model and reloading a data set. torch and matplotlib only: no
Ray, MLflow or Optuna, like the rest of the method layer.

The images are the first validation image of each of the first :data:`MAX_IMAGES` classes. The
validation split is fixed by ``data.seed``, so every trial of a study shows the same images, and
galleries of different trials can be compared side by side (``python -m lorsp.pareto --gallery``).
"""

from __future__ import annotations

import io
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where a gallery is drawn: the MLflow and Pareto tools only copy files
    import torch
    from torch import Tensor

    from lorsp.data import ImageSplit

GALLERY_FILE = "gallery.png"
MAX_IMAGES = 8
DPI = 100
_ROW_INCHES = 1.15
_COLUMN_INCHES = 1.45


def gallery_indices(labels: Tensor, count: int = MAX_IMAGES) -> list[int]:
    """The first image of each of the first `count` classes (by class id), in class order."""
    seen: dict[int, int] = {}
    for index, label in enumerate(labels.tolist()):
        seen.setdefault(int(label), index)
    return [seen[c] for c in sorted(seen)[:count]]


@dataclass
class Panels:
    """What a gallery shows, on the CPU: one row per image."""

    indices: list[int]
    labels: list[int]
    predictions: list[int]
    images: Tensor  # [N, 3, L, L] in [0, 1]
    prompts: Tensor  # [N, 3, L, L], signed
    spikes: Tensor | None  # [N, 3, L, L] per pixel, [N, K, 3] per factor gate, None without neurons
    timesteps: int | None


def capture(model: Any, split: ImageSplit, image_size: int, device: torch.device | str,
            indices: Sequence[int] | None = None) -> Panels:
    """Run `model` (a :class:`lorsp.model.PromptedClassifier`) on the gallery images, in eval mode.

    The images go through the same :class:`BatchIterator` as evaluation (same resize), and the
    model's train/eval mode is restored afterwards.
    """
    import torch

    from lorsp.data import BatchIterator

    chosen = list(indices) if indices is not None else gallery_indices(split.labels)
    subset = split.subset(torch.tensor(chosen, dtype=torch.long))
    x, y = next(iter(BatchIterator(subset, batch_size=len(chosen), image_size=image_size, device=device)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prompter = model.prompter
            prompt = prompter.prompt(x).float().expand_as(x)
            predictions = model(x).argmax(1)
            spikes = prompter.spike_counts(x)
    finally:
        model.train(was_training)
    return Panels(indices=chosen, labels=y.tolist(), predictions=predictions.tolist(), images=x.float().cpu(),
                  prompts=prompt.cpu(), spikes=None if spikes is None else spikes.float().cpu(),
                  timesteps=getattr(prompter, "timesteps", None))


def render(panels: Panels, title: str = "", class_names: Sequence[str] = ()) -> bytes:
    """The gallery as PNG bytes: rows = images; columns = image, prompt, prompted image, spikes.

    The prompt is the mean over RGB on a diverging map whose scale is symmetric and shared by all
    rows (so rows compare, and zero is white); the prompted image is clipped to [0, 1] for display
    only (the model sees it unclipped). Spikes per pixel are summed over channels, factors and
    both populations; LoRSP's factor gates are shown as a factor × RGB block per image.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels.indices)
    size = panels.images.shape[-1]
    gap = max(1.0, size / 8)
    columns = ["image", "prompt\n(mean over RGB)", "prompted\n(clipped to [0, 1])"]
    spikes = panels.spikes
    gates = spikes is not None and tuple(spikes.shape[1:]) != tuple(panels.images.shape[1:])
    if spikes is not None:
        steps = f", T={panels.timesteps}" if panels.timesteps else ""
        columns.append(f"gate spikes\n(factor × RGB{steps})" if gates else f"spikes per pixel\n(all neurons{steps})")
    width = 1.1 + _COLUMN_INCHES * len(columns)
    lines = [piece for line in title.splitlines() for piece in textwrap.wrap(line, int(width * 11)) or [""]]
    head = 0.6 + 0.16 * len(lines)  # inches above the columns: the title's lines and the column names
    fig = Figure(figsize=(width, head + 0.75 + _ROW_INCHES * n), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    top = lambda i: i * (size + gap)  # noqa: E731  (row i's upper edge, in pixels)
    extent = lambda i: (0, size, top(i) + size, top(i))  # noqa: E731

    prompt_map = panels.prompts.mean(1).numpy()
    bound = float(np.abs(prompt_map).max()) or 1.0
    images = panels.images.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    prompted = (panels.images + panels.prompts).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    spike_map = None
    if spikes is not None:
        spike_map = spikes.numpy() if gates else spikes.sum(1).numpy()
    spike_top = float(spike_map.max()) if spike_map is not None and spike_map.size else 0.0
    drawn: dict[int, Any] = {}
    for i in range(n):
        axes[0].imshow(images[i], extent=extent(i), interpolation="nearest")
        drawn[1] = axes[1].imshow(prompt_map[i], extent=extent(i), cmap="RdBu_r", vmin=-bound, vmax=bound,
                                  interpolation="nearest")
        axes[2].imshow(prompted[i], extent=extent(i), interpolation="nearest")
        if spike_map is not None:
            drawn[3] = axes[3].imshow(spike_map[i], extent=extent(i), cmap="magma", vmin=0,
                                      vmax=max(spike_top, 1.0), interpolation="nearest")
    height = top(n - 1) + size
    for c, (ax, name) in enumerate(zip(axes, columns)):
        ax.set_xlim(0, size)
        ax.set_ylim(height, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=8)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if c in drawn:  # below the column, without taking height from it: rows stay aligned
            bar_height = 0.1 / (_ROW_INCHES * n)
            bar = fig.colorbar(drawn[c], cax=ax.inset_axes((0.05, -2.5 * bar_height, 0.9, bar_height)),
                               orientation="horizontal")
            low, high = drawn[c].get_clim()
            ticks = [low, 0.0, high] if low < 0 else [low, high]
            bar.set_ticks(ticks, labels=[f"{t:.2g}" for t in ticks])
            bar.ax.tick_params(labelsize=7)
    names = list(class_names)
    labels = []
    for index, label, predicted in zip(panels.indices, panels.labels, panels.predictions):
        name = names[label] if 0 <= label < len(names) else str(label)
        guess = names[predicted] if 0 <= predicted < len(names) else str(predicted)
        labels.append(f"val #{index}: {name}\npredicted {guess}")
    axes[0].set_yticks([top(i) + size / 2 for i in range(n)], labels, fontsize=7)
    axes[0].tick_params(axis="y", length=0)
    if title:
        fig.suptitle("\n".join(lines), fontsize=9, y=1 - 0.08 / fig.get_figheight(), va="top")
    fig.subplots_adjust(left=1.0 / fig.get_figwidth(), right=0.98, top=1 - head / fig.get_figheight(),
                        bottom=0.5 / fig.get_figheight(), wspace=0.12)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def gallery_png(model: Any, split: ImageSplit, image_size: int, device: torch.device | str, title: str = "",
                class_names: Sequence[str] = ()) -> bytes:
    """:func:`capture` then :func:`render`."""
    return render(capture(model, split, image_size, device), title, class_names)


def title_for(study: Any, metrics: dict[str, float]) -> str:
    """Study, method and the settings it read, and the validation numbers: what tells galleries apart."""
    from lorsp.methods import method

    prompt = study.prompt
    knobs = method(prompt.method).knob_names
    settings = ", ".join(f"{k} {getattr(prompt, k):.3g}" if isinstance(getattr(prompt, k), float)
                         else f"{k} {getattr(prompt, k)}" for k in knobs)
    numbers = "  ".join(f"{k} {metrics[k]:.3g}" for k in ("val_acc", "prompt_density") if k in metrics)
    head = f"{study.name}: {prompt.method}" + (f" ({settings})" if settings else "")
    return head + (f"\n{numbers}" if numbers else "")


def draw_safely(model: Any, split: ImageSplit, image_size: int, device: torch.device | str, title: str,
                class_names: Sequence[str], log: Callable[[str], None]) -> bytes | None:
    """The gallery PNG, or None with one warning on stderr: a picture must never cost a trained trial."""
    tick = time.perf_counter()
    try:
        png = gallery_png(model, split, image_size, device, title, class_names)
    except Exception as err:  # matplotlib, a method without a usable prompt: the trial still counts
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        print(f"warning: no prompt gallery ({type(err).__name__}: {reason})", file=sys.stderr, flush=True)
        return None
    log(f"prompt gallery drawn in {time.perf_counter() - tick:.2f}s")
    return png


def side_by_side(galleries: Sequence[tuple[str, Path]], out: Path, title: str = "") -> Path:
    """Put PNG galleries next to each other at their own resolution, each under its caption."""
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not galleries:
        raise ValueError("no gallery to put side by side")
    pictures = [(caption, mpimg.imread(str(path))) for caption, path in galleries]
    caption_px, title_px, margin = 46, 30 if title else 0, 10
    width = sum(p.shape[1] for _, p in pictures) + margin * (len(pictures) + 1)
    height = max(p.shape[0] for _, p in pictures) + caption_px + title_px + margin
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    x = margin
    for caption, picture in pictures:
        h, w = picture.shape[:2]
        ax = fig.add_axes((x / width, (height - title_px - caption_px - h) / height, w / width, h / height))
        ax.imshow(picture, interpolation="nearest")
        ax.set_axis_off()
        fig.text((x + w / 2) / width, (height - title_px - caption_px / 2) / height, caption, ha="center",
                 va="center", fontsize=9)
        x += w + margin
    if title:
        fig.text(0.5, 1 - title_px / 2 / height, title, ha="center", va="center", fontsize=11, weight="bold")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out), dpi=DPI)
    return out
