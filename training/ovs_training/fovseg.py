"""FISA / FOV-Seg training: SIMO's query-only tuning, TeVA's targets, the FOV-Seg loss (ce_weight x CE +
fiser_weight x FiSeR) and what the export writes.

SIMO tunes CLIP-V's query projections f_q only. The OpenAI ViT fuses q, k, v in one `in_proj_weight` [3C, C]:
`split_query_projections` parametrises it as `cat([original[:C], frozen k/v rows])`, so only the q rows can change
(AdamW's decoupled weight decay on the unused rows of `original` never reaches the output), and the export writes
the full fused tensor (k/v rows = the base weights), so the runtime loads it with no parametrisation.

Training targets are GT masks with the MaskCLIP++ class-balanced CE (the package has no frozen Swin-B Mask2Former
proposals matched to GT, which the papers presumably use; training/README.md says so).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ovs_ros.models.clip import mask_class_logits

from .config import FovSegConfig
from .fiser import FiSeR
from .losses import class_balanced_cross_entropy


class _QueryRowsOnly(nn.Module):
    """`original` -> `cat([original[:rows], frozen])`: the rows after `rows` (k, v) come from a frozen buffer."""

    def __init__(self, frozen: Tensor, rows: int):
        super().__init__()
        self.rows = int(rows)
        self.register_buffer("frozen", frozen.detach().clone())

    def forward(self, original: Tensor) -> Tensor:
        return torch.cat([original[: self.rows], self.frozen.to(original.dtype)], dim=0)


def split_query_projections(classifier: nn.Module) -> None:
    """OpenAI ViT: make only the q rows of every visual block's fused `in_proj` trainable (idempotent; EVA has a
    separate `q_proj` and needs nothing)."""
    if classifier.family != "vit":
        return
    for block in classifier.model.visual.transformer.resblocks:
        attn = block.attn
        width = attn.embed_dim
        for name in ("in_proj_weight", "in_proj_bias"):
            if parametrize.is_parametrized(attn, name) or getattr(attn, name) is None:
                continue
            parametrize.register_parametrization(attn, name, _QueryRowsOnly(getattr(attn, name)[width:], width))


def export_tensors(classifier: nn.Module, trained_names: List[str]) -> Dict[str, Tensor]:
    """The runtime names and values of the trained classifier tensors (a split fused projection as the full tensor)."""
    out: Dict[str, Tensor] = {}
    params = dict(classifier.named_parameters())
    for name in trained_names:
        if ".parametrizations." in name:
            module_name, _, rest = name.partition(".parametrizations.")
            attr = rest.split(".")[0]
            module = classifier.get_submodule(module_name)
            out[f"{module_name}.{attr}"] = getattr(module, attr)
        else:
            out[name] = params[name]
    return out


class FovSegObjective(nn.Module):
    """The FISA / FOV-Seg loss of one batch; holds FiSeR (trained, not exported) when enabled."""

    def __init__(self, config: FovSegConfig, classifier: nn.Module, seed: int):
        super().__init__()
        self.config = config
        self.fiser: Optional[FiSeR] = None
        if config.fiser:
            from ovs_ros.models.clip.teva import visual_width

            text_width, context = _text_widths(classifier.model)
            self.fiser = FiSeR(text_width, visual_width(classifier.family, classifier.model.visual),
                               classifier.embed_dim, width=config.fiser_width, layers=config.fiser_layers,
                               heads=config.fiser_heads, context_length=context)
        self.generator = torch.Generator().manual_seed(seed + 7919)  # the masked label of each image

    def teva_targets(self, class_text: Tensor, class_ids: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """TeVA's [TGT] `[B, K', D]` and padding `[B, K']` (None for the whole vocabulary)."""
        batch = class_ids.shape[0]
        if self.config.teva_targets == "vocabulary":
            return class_text.unsqueeze(0).expand(batch, -1, -1), None
        labels = [sorted({int(c) for c in class_ids[b].tolist() if c >= 0}) for b in range(batch)]
        k_max = max(1, max(len(x) for x in labels))
        index = torch.zeros(batch, k_max, dtype=torch.long)
        padding = torch.ones(batch, k_max, dtype=torch.bool)
        for b, row in enumerate(labels):
            index[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            padding[b, : len(row)] = False
        device = class_text.device
        return class_text[index.to(device)], padding.to(device)

    def forward(self, model: nn.Module, pixel_values: Tensor, masks: Tensor, class_ids: Tensor, text: Tensor,
                class_phrases: List[str], temperature: float) -> Tensor:
        """`ce_weight` x class-balanced CE over the training vocabulary (+ `fiser_weight` x L_FiSeR).

        Args:
            text: `[K, T, D]` L2-normalised text embeddings of this step's sampled synonyms.
        """
        classifier = model.classifier
        num_classes = text.shape[0]
        class_text = F.normalize(text.float().mean(dim=1), dim=-1)  # K, D
        kwargs = {}
        if classifier.teva is not None:
            targets, padding = self.teva_targets(class_text, class_ids)
            kwargs = {"text_embeddings": targets, "text_padding_mask": padding}
        out = classifier.encode_masks(pixel_values, masks, **kwargs)
        logits = mask_class_logits(out.mask_embeddings.float(), text.float(),
                                   torch.arange(num_classes, device=text.device), num_classes, model.psm,
                                   classifier.logit_scale.float(), patch_embeddings=out.patch_embeddings)
        loss = self.config.ce_weight * class_balanced_cross_entropy(logits.float(), class_ids,
                                                                    temperature=temperature)
        if self.fiser is not None and self.config.fiser_weight > 0:
            loss = loss + self.config.fiser_weight * self.fiser.loss(
                classifier.model, out.image_tokens, class_ids, class_phrases, class_text, classifier.logit_scale,
                self.generator)
        return loss


def _text_widths(clip_model: nn.Module) -> Tuple[int, int]:
    """(text transformer width, context length)."""
    from .fiser import text_tower_parts

    embed, pos, *_ = text_tower_parts(clip_model)
    return int(embed.weight.shape[1]), int(pos.shape[0])
