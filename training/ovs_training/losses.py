"""MaskCLIP++ loss: class-reweighted cross-entropy over mask-vs-class logits, one synonym sampled per class.

seed-spec 2.3 / Table 14: each valid mask of image b gets weight `1 / (B * n_classes_in_image(b) *
n_masks_of_its_class(b))`, so every image weighs the same and, inside an image, every class present weighs the
same however many instances it has. B is the number of images that still have a valid mask after the empty masks
were dropped (MaskCLIP++ `ReweightCELoss._cal_ce_loss`: `len(unique(mask2batch))` taken after `ignore_empty`), so
an image whose masks all vanished renormalises the others. The loss is the weighted sum of per-mask CE
(temperature 1.0).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .datasets import IGNORE_CLASS


def class_balanced_weights(class_ids: Tensor) -> Tensor:
    """`[B, Q]` class ids (-1 = padding / dropped) -> `[B, Q]` float weights (0 where ignored).

    Weight of a valid mask: `1 / (B * n_classes_in_image * n_masks_of_its_class)`; B counts the images with at
    least one valid mask (as MaskCLIP++), so the weights of a batch sum to 1 whenever any mask is valid.
    """
    if class_ids.dim() != 2:
        raise ValueError(f"class_ids must be [B, Q], got {tuple(class_ids.shape)}")
    valid = class_ids != IGNORE_CLASS
    b = valid.any(1).sum().clamp_min(1).to(torch.float32)
    same = (class_ids.unsqueeze(2) == class_ids.unsqueeze(1)) & valid.unsqueeze(1) & valid.unsqueeze(2)
    n_same = same.sum(-1).clamp_min(1).to(torch.float32)  # B, Q: masks of this mask's class in its image
    n_classes = (valid.to(torch.float32) / n_same).sum(-1, keepdim=True)  # B, 1: distinct classes per image
    weights = 1.0 / (b * n_classes.clamp_min(1.0) * n_same)
    return torch.where(valid, weights, torch.zeros_like(weights))


def class_balanced_cross_entropy(logits: Tensor, class_ids: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Weighted CE of `[B, Q, K]` logits against `[B, Q]` class ids (-1 ignored); a scalar."""
    if logits.dim() != 3 or logits.shape[:2] != class_ids.shape:
        raise ValueError(f"logits [B, Q, K] and class_ids [B, Q] disagree: {tuple(logits.shape)} vs "
                         f"{tuple(class_ids.shape)}")
    weights = class_balanced_weights(class_ids)
    targets = class_ids.clamp_min(0)
    ce = F.cross_entropy((logits.float() / temperature).flatten(0, 1), targets.flatten(), reduction="none")
    return (ce.view_as(weights) * weights).sum()


def sample_synonym_rows(synonym_class_index: Tensor, num_classes: int,
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """One synonym row per class, uniformly among the class's synonyms -> `[K]` long indices into `[S]`.

    Every class must have at least one synonym (a `Vocabulary` guarantees it).
    """
    syn = synonym_class_index.to("cpu", torch.long)
    counts = torch.bincount(syn, minlength=num_classes)
    if counts.numel() != num_classes or bool((counts == 0).any()):
        raise ValueError("every class needs at least one synonym in synonym_class_index")
    order = torch.argsort(syn, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    pick = (torch.rand(num_classes, generator=generator) * counts).long().clamp_max(counts - 1)
    return order[starts + pick]
