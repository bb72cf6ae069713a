"""The prompted classifier: prompt -> backbone normalisation -> frozen timm backbone -> linear head.

The prompt works in pixel space (values in [0, 1]) and the backbone's own mean/std normalisation is
applied *after* it, as LoR-VP does, so a prompt trained for one backbone family is expressed in the
same units as the image and its sparsity is meaningful.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lorsp.config import BackboneConfig, ConfigError, StudyConfig, check_backbone_name
from lorsp.prompts import Prompter, create_prompter


class PromptedClassifier(nn.Module):
    """Only `prompter` and `head` train; the backbone stays frozen and in eval mode."""

    def __init__(self, prompter: Prompter, backbone: nn.Module, num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.prompter = prompter
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PromptedClassifier:
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics and dropout must not move
        return self

    def features(self, x: Tensor) -> Tensor:
        prompted = self.prompter(x)
        return self.backbone((prompted - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint or an export needs: the prompt and the head, never the backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"prompt/head state does not fit this model: missing {missing}, unexpected {unexpected}")

    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def create_backbone(cfg: BackboneConfig, image_size: int) -> nn.Module:
    """A headless timm model (`num_classes=0` gives pooled features) for `image_size` inputs."""
    import timm

    import lorsp.backbones  # noqa: F401  (registers lorsp's own models with timm)

    check_backbone_name(cfg.model)
    kwargs: dict[str, Any] = {**cfg.kwargs, "num_classes": 0}
    pretrained = cfg.pretrained and not cfg.checkpoint
    try:
        try:
            backbone = timm.create_model(cfg.model, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError:
            # Convolutional families take any input size and reject `img_size`.
            backbone = timm.create_model(cfg.model, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ConfigError(
            f"backbone.pretrained: cannot load pretrained weights for '{cfg.model}' ({reason}); "
            "set backbone.checkpoint: PATH to a local weights file, or backbone.pretrained: false"
        ) from None
    if cfg.checkpoint:
        load_backbone_checkpoint(backbone, cfg.checkpoint)
    return backbone


def load_backbone_checkpoint(backbone: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load local weights (safetensors or a torch file), ignoring the original classifier head."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"backbone.checkpoint: no such file '{path}'; point it at a .safetensors/.pth file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    if missing:
        raise ConfigError(
            f"backbone.checkpoint: '{path}' does not fit {type(backbone).__name__} "
            f"({len(missing)} tensors missing or mis-shaped, e.g. {missing[0]}); check backbone.model"
        )
    backbone.load_state_dict(usable, strict=False)


def normalisation(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    import timm

    data_cfg = timm.data.resolve_data_config({}, model=backbone)
    return tuple(data_cfg["mean"]), tuple(data_cfg["std"])


def build_model(study: StudyConfig, num_classes: int) -> PromptedClassifier:
    """Build the prompt, the frozen backbone and a fresh head from a resolved study config."""
    size = study.data.image_size
    p = study.prompt
    prompter = create_prompter(p.method, size, **p.model_dump(exclude={"method"}))
    backbone = create_backbone(study.backbone, size)
    mean, std = normalisation(backbone)
    return PromptedClassifier(prompter, backbone, num_classes, mean, std)
