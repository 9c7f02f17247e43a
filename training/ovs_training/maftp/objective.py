"""One training step's loss with the MAFT+ options: the GT-mask CE (weighted), the mask-aware loss over proposals
and the Representation Compensation against a frozen copy of CLIP-V's trunk.

GT masks and proposals are embedded in one `encode_masks` call (masks are embedded independently of each other, so
joining them changes no number); the RC's dense map comes from a second trunk pass, as in MAFT+ (`maft_plus.py`:
`self.backbone.extract_features` again in training). The frozen teacher is copied at construction, i.e. from the
base weights before any resume loads tuned ones.
"""
from __future__ import annotations

import copy
import re
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MAFTPlusOptions
from .losses import mask_aware_loss, representation_compensation_loss
from .proposals import build_proposals

# MAFT+ `_freeze`: CLIP-V stem, stages and norm_pre train; trunk.head and head stay frozen
_CLIP_HEAD = re.compile(r"classifier\.model\.visual\.(trunk\.head|head)\..+")


class MAFTPlusObjective:
    def __init__(self, options: MAFTPlusOptions, classifier: nn.Module, *, seed: int, device: torch.device):
        self.options = options
        needs_convnext = options.rc_weight > 0 or options.freeze_clip_head
        if needs_convnext and classifier.family != "convnext":
            raise ValueError(f"maftp.rc_weight / freeze_clip_head need a ConvNeXt CLIP (MAFT+'s stride-32 map and "
                             f"head), got family {classifier.family!r}")
        self.teacher = None
        if options.rc_weight > 0:
            self.teacher = copy.deepcopy(classifier.model.visual.trunk).to(device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.proposals = build_proposals(options.proposals, seed=seed) if options.ma_weight > 0 else None
        if self.proposals is not None and hasattr(self.proposals, "to"):
            self.proposals.to(device)

    def rng_generators(self) -> Dict[str, torch.Generator]:
        """Random generators the checkpoint must carry (the synthetic proposals' draw)."""
        rng = getattr(self.proposals, "rng", None)
        return {"maftp_proposals": rng} if isinstance(rng, torch.Generator) else {}

    def adjust_lr_multipliers(self, lr_multipliers: Dict[str, float]) -> Dict[str, float]:
        """The recipe's trained tensors, less CLIP-V's head when `freeze_clip_head` (MAFT+ `_freeze`)."""
        if not self.options.freeze_clip_head:
            return lr_multipliers
        return {k: v for k, v in lr_multipliers.items() if not _CLIP_HEAD.fullmatch(k)}

    def loss(self, model: nn.Module, images: Tensor, masks: Tensor, class_ids: Tensor, text: Tensor,
             num_classes: int, ce: Callable[[Tensor, Tensor], Tensor], *,
             pixel_values: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, float]]:
        """-> (weighted total, {term: value}) for a batch; `ce(logits, class_ids)` is the trainer's GT-mask CE.
        `pixel_values` (the trainer's: padding zeroed, padded to the CLIP stride, `masks` alike) or None = from
        `images`; proposals come from the uint8 `images` and are zero-padded to the masks' frame."""
        o = self.options
        if pixel_values is None:
            pixel_values = model.pixel_values(images)
        queries = masks
        proposals = None
        if self.proposals is not None:
            proposals = self.proposals(images, masks[..., :images.shape[-2], :images.shape[-1]]).to(masks.dtype)
            pad = (0, masks.shape[-1] - proposals.shape[-1], 0, masks.shape[-2] - proposals.shape[-2])
            if any(pad):
                proposals = F.pad(proposals, pad)
            queries = torch.cat([masks, proposals], dim=1)
        logits = model(pixel_values, queries, text, torch.arange(num_classes, device=text.device), num_classes)
        g = masks.shape[1]
        total = logits.new_zeros((), dtype=torch.float32)
        terms: Dict[str, float] = {}
        if o.ce_weight > 0:
            ce_loss = ce(logits[:, :g].float(), class_ids)
            total = total + o.ce_weight * ce_loss
            terms["ce_loss"] = float(ce_loss.detach())
        if proposals is not None:
            ma = mask_aware_loss(logits[:, g:].float(), proposals, masks, class_ids)
            total = total + o.ma_weight * ma
            terms["ma_loss"] = float(ma.detach())
        if self.teacher is not None:
            student = model.classifier.model.visual.trunk.forward_features(pixel_values)
            with torch.no_grad():
                teacher = self.teacher.forward_features(pixel_values)
            rc = representation_compensation_loss(student, teacher)
            total = total + o.rc_weight * rc
            terms["rc_loss"] = float(rc.detach())
        return total, terms
