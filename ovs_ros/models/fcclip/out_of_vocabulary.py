"""FC-CLIP's out-of-vocabulary branch (`fcclip/fcclip.py:353-359`): the generator's stride-4 mask logits are
resized (bilinear, align_corners=False) to the frozen CLIP's stride-32 dense map `clip_vis_dense`, the dense
features are averaged under each binarised mask (`logit > 0`), and the pooled vector goes through the CLIP head
(`trunk.head` on a 1x1 map, then `head`) into CLIP's embedding space. Logits against the text embeddings use CLIP's
own (frozen) logit scale.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .backbone import FCCLIPBackbone
from .classification import mask_pool


def out_of_vocabulary_embeddings(backbone: FCCLIPBackbone, clip_dense: Tensor, mask_logits: Tensor) -> Tensor:
    """clip_dense `[B, C, h, w]`, mask_logits `[B, Q, H/4, W/4]` -> `[B, Q, D]` CLIP mask embeddings, not normalised."""
    masks = F.interpolate(mask_logits, size=clip_dense.shape[-2:], mode="bilinear", align_corners=False)
    return backbone.project_pooled(mask_pool(clip_dense, masks))
