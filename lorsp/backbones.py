"""Small backbones that lorsp registers with timm, so study files name them like any timm model.

Visual prompting adapts a *pretrained* backbone; on a machine without network access no hub
weights can be fetched, so the quickstart and the tests need a backbone that was pretrained here.
`vit_micro_patch4_16.gratings` is a 2-block ViT (16 px input, 4 px patches, width 64) pretrained by
`python -m lorsp.pretrain` on lorsp's generated oriented-grating images (random crops, never
flips, which would turn one orientation class into another; 98.89 % validation accuracy on that
task, as the file's metadata records) and shipped in `lorsp/assets/`. Prompting it for handwritten digits is a
miniature of the real use: a frozen backbone from one domain adapted to another. Without the tag
(or with `pretrained: false`) the same architecture starts from random weights.

Registration goes through timm's public model registry (`register_model`,
`generate_default_cfgs`, `build_model_with_cfg`), so `timm.create_model`, `timm.is_model`,
`resolve_data_config` and the pretrained-weights loader all treat these models as their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

ASSETS = Path(__file__).resolve().parent / "assets"

MICRO_VIT_ARGS: dict[str, Any] = dict(
    img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, global_pool="avg",
)
"""Architecture of `vit_micro_patch4_16`; the shipped weights were trained with exactly these."""

MICRO_VIT_GRATINGS = ASSETS / "vit_micro_patch4_16.gratings.safetensors"

default_cfgs = generate_default_cfgs({
    "vit_micro_patch4_16.gratings": {
        "file": str(MICRO_VIT_GRATINGS),
        "num_classes": 0,  # shipped headless: the prompt study adds its own linear head
        "input_size": (3, 16, 16),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": False,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
    },
})


@register_model
def vit_micro_patch4_16(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Micro/4 at 16 px: fast enough to train on two CPU cores in seconds."""
    model_args = {**MICRO_VIT_ARGS, **kwargs}
    return build_model_with_cfg(
        VisionTransformer, "vit_micro_patch4_16", pretrained,
        pretrained_filter_fn=checkpoint_filter_fn, **model_args,
    )
