"""FC-CLIP's classification pieces shared by both branches (`fcclip_transformer_decoder.py`: `MaskPooling`,
`get_classification_logits`; `fcclip.py`: `get_text_classifier`).

Text side: each (synonym, template) sentence is encoded and L2-normalised, the templates are averaged and the mean
L2-normalised again -> one row per synonym; the learned void embedding (normalised) is appended as the last row.
Image side: a query embedding is L2-normalised, dotted with every row and scaled by `min(exp(logit_scale), 100)`;
a class logit is the max over its synonyms (OpenSeg / ODISE), the void logit comes last.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOGIT_SCALE_MAX = 100.0  # `torch.clamp(logit_scale.exp(), max=100)`
MASK_AREA_EPS = 1e-8  # `mask.sum(dim=(-1, -2), keepdim=True) + 1e-8` in FC-CLIP's MaskPooling


def mask_pool(features: Tensor, mask_logits: Tensor) -> Tensor:
    """FC-CLIP `MaskPooling`: average of `features` `[B, C, H, W]` under each *binarised* mask (`logit > 0`).

    Args:
        mask_logits: `[B, Q, H', W']`, resized bilinearly (align_corners=False) to the features' size if needed.

    Returns:
        `[B, Q, C]`; an empty mask gives zeros. (MaskCLIP++'s ConvNeXt pooling keeps the soft mask instead.)
    """
    if mask_logits.shape[-2:] != features.shape[-2:]:
        mask_logits = F.interpolate(mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
    mask = (mask_logits.detach() > 0).to(features.dtype).flatten(2)  # B, Q, HW
    weights = mask / (mask.sum(dim=-1, keepdim=True) + MASK_AREA_EPS)
    return torch.matmul(weights, features.flatten(2).transpose(1, 2))


def synonym_text_classifier(text_embeddings: Tensor) -> Tensor:
    """`[S, T, D]` per-sentence text features (any norm) -> `[S, D]`: normalise, mean over templates, normalise
    (FC-CLIP `get_text_classifier`; MaskCLIP++ `test_t_embs_f`)."""
    if text_embeddings.dim() != 3:
        raise ValueError(f"text_embeddings must be [S, T, D], got {tuple(text_embeddings.shape)}")
    x = text_embeddings / text_embeddings.norm(dim=-1, keepdim=True)
    x = x.mean(dim=1)
    return x / x.norm(dim=-1, keepdim=True)


def with_void(text_classifier: Tensor, void_embedding: Tensor) -> Tensor:
    """Append the normalised void embedding `[1, D]` as the last row: `[S + 1, D]`."""
    return torch.cat([text_classifier, F.normalize(void_embedding.to(text_classifier), dim=-1)], dim=0)


def classification_logits(embeddings: Tensor, text_classifier_with_void: Tensor, logit_scale: Tensor,
                          synonym_class_index: Tensor, num_classes: int) -> Tensor:
    """FC-CLIP `get_classification_logits`: `[B, Q, D]` query embeddings -> `[B, Q, K + 1]` logits, void last.

    Args:
        text_classifier_with_void: `[S + 1, D]` unit rows, one per synonym in class order, void last.
        logit_scale: scalar log temperature; the scale is `min(exp(logit_scale), 100)`.
        synonym_class_index: `[S]` class of each synonym row (non-decreasing, every class present).
    """
    s = synonym_class_index.numel()
    if text_classifier_with_void.shape[0] != s + 1:
        raise ValueError(f"text classifier has {text_classifier_with_void.shape[0]} rows, expected {s} synonyms + "
                         "void")
    x = F.normalize(embeddings, dim=-1)
    scale = torch.clamp(logit_scale.exp(), max=LOGIT_SCALE_MAX)
    logits = torch.matmul(scale * x, text_classifier_with_void.t())  # B, Q, S + 1 (FC-CLIP's order of operations)
    per_synonym = logits[..., :s]
    index = synonym_class_index.to(device=logits.device, dtype=torch.long).view(1, 1, s).expand_as(per_synonym)
    per_class = torch.full((*logits.shape[:-1], num_classes), float("-inf"), device=logits.device,
                           dtype=logits.dtype).scatter_reduce(-1, index, per_synonym, reduce="amax")
    return torch.cat([per_class, logits[..., s:]], dim=-1)
