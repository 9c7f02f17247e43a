"""Tiny random-weight CLIP classifiers with the real architectures, for CPU tests and the offline demo.

open_clip's timm wrapper takes no trunk kwargs, so the tiny EVA is an open_clip `CustomTextCLIP` whose visual tower
is a `TimmModel` around a small timm EVA02-CLIP trunk (RoPE, SwiGLU, sub-LN): exactly what `EVA02-B-16` builds,
with fewer and narrower blocks.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .config import ClipClassifierConfig
from .towers import ClipClassifier

TINY_EMBED_DIM = 32
TINY_NATIVE_SIZE = 64  # the towers' native (pretraining) input size; other sizes work through resized pos/RoPE
TINY_TEXT_CFG = dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)

TINY_VIT_CFG = {
    "embed_dim": TINY_EMBED_DIM,
    "text_cfg": TINY_TEXT_CFG,
    "vision_cfg": {"image_size": TINY_NATIVE_SIZE, "layers": 4, "width": 64, "patch_size": 16, "head_width": 16},
}
TINY_CONVNEXT_CFG = {
    "embed_dim": TINY_EMBED_DIM,
    "text_cfg": TINY_TEXT_CFG,
    "vision_cfg": {"timm_model_name": "convnext_atto", "timm_pool": "", "timm_proj": "linear",
                   "image_size": TINY_NATIVE_SIZE},
}
TINY_FAMILIES = ("eva", "vit", "convnext", "convnext-mlp")


def tiny_eva_open_clip_model() -> nn.Module:
    import timm
    from open_clip.model import CustomTextCLIP
    from open_clip.timm_model import TimmModel

    model = CustomTextCLIP(
        embed_dim=TINY_EMBED_DIM,
        text_cfg=TINY_TEXT_CFG,
        vision_cfg=dict(image_size=TINY_NATIVE_SIZE, layers=1, width=32, patch_size=16, head_width=16),
    )
    trunk = timm.create_model(
        "eva02_base_patch16_clip_224", pretrained=False, img_size=TINY_NATIVE_SIZE, depth=4, embed_dim=64,
        num_heads=4, num_classes=TINY_EMBED_DIM, global_pool="token",
    )
    visual = TimmModel.__new__(TimmModel)  # what TimmModel(pool='token', proj=None) builds, around a small trunk
    nn.Module.__init__(visual)
    visual.image_size = (TINY_NATIVE_SIZE, TINY_NATIVE_SIZE)
    visual.trunk = trunk
    visual.head = nn.Sequential()
    model.visual = visual
    return model


def build_tiny_classifier(family: str, *, input_short_side: int = 224, seed: int = 0,
                          **options: Any) -> ClipClassifier:
    """A seeded tiny classifier of `family` ("eva", "vit", "convnext", "convnext-mlp"); `options` are further
    `ClipClassifierConfig` fields (`mask_prior_blocks`, `teva`)."""
    torch.manual_seed(seed)
    name = f"tiny-{family}"
    if family == "eva":
        return ClipClassifier.from_open_clip(
            tiny_eva_open_clip_model(),
            ClipClassifierConfig(model_name=name, input_short_side=input_short_side, **options),
        )
    if family == "vit":
        cfg = TINY_VIT_CFG
    elif family == "convnext":
        cfg = TINY_CONVNEXT_CFG
    elif family == "convnext-mlp":  # the convnext_large_d_320 head
        cfg = copy.deepcopy(TINY_CONVNEXT_CFG)
        cfg["vision_cfg"]["timm_proj"] = "mlp"
    else:
        raise ValueError(f"unknown tiny classifier family {family!r}; choose from {TINY_FAMILIES}")
    return ClipClassifier(
        ClipClassifierConfig(model_name=name, open_clip_model_cfg=copy.deepcopy(cfg), input_short_side=input_short_side,
                             quick_gelu=family == "vit", **options)
    )
