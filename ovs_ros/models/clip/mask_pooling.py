"""Mask pooling for global-average-pooling CLIPs (ConvNeXt through timm, open_clip `TimmModel`).

MaskCLIP++ `vencoder/clip_convnext.py`: the soft mask is resampled to the stride-32 feature map (bilinear,
`align_corners=False`, kept soft, corrections.md 6), L1-normalised with `sum + 1e-6`, the features are averaged under
it, and the pooled `[C]` vector goes through the trunk's head (`trunk.head`: pool of a 1x1 map, norm) and open_clip's
projection (`head`) as if it were a 1x1 image. A full-image mask reproduces `encode_image`.
"""
from __future__ import annotations

from torch import Tensor, nn

from .mask_tokens import resample_masks_to_grid

MASK_AREA_EPS = 1e-6


def mask_average_pool(features: Tensor, mask_probs: Tensor) -> Tensor:
    """Soft mask average pooling.

    Args:
        features: `[B, C, h, w]` stride-32 feature map.
        mask_probs: `[B, Q, H, W]` soft masks in the CLIP input frame.

    Returns:
        `[B, Q, C]` pooled features; an empty mask gives zeros (then the head's LayerNorm gives its bias).
    """
    grid_masks = resample_masks_to_grid(mask_probs.to(features.dtype), tuple(features.shape[-2:])).flatten(2)
    weights = grid_masks / (grid_masks.sum(dim=-1, keepdim=True) + MASK_AREA_EPS)  # B, Q, hw
    return weights @ features.flatten(2).transpose(1, 2)


def convnext_project(visual: nn.Module, pooled: Tensor) -> Tensor:
    """`[..., C]` trunk features -> `[..., D]` CLIP embeddings through `trunk.head` (as a 1x1 map) and `head`."""
    lead = pooled.shape[:-1]
    x = pooled.reshape(-1, pooled.shape[-1], 1, 1)
    x = visual.head(visual.trunk.forward_head(x))
    return x.reshape(*lead, x.shape[-1])
