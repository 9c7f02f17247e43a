"""Parameterised similarity modelling (PSM) and class logits (MaskCLIP++, corrections.md 8).

Every PSM maps mask embeddings and the cached text embeddings `[S, T, D]` (S synonyms, T templates, L2-normalised
per sentence) to per-synonym logits `[B, Q, S]`; `mask_class_logits` then takes the max over each class's synonyms.

* ViT / ResNet: per-template cosine x `min(exp(logit_scale), 100)` -> `LinearPSM` (or `IdentityPSM`, the mean over
  templates, for a model without PSM weights).
* ConvNeXt: `PseudoTextPSM` (text refined by the image's patch embeddings; no logit scale), or `CDTPSM`, MAFT+'s
  Content-Dependent Transfer (`ovs_ros.models.maftp.cdt`) trained by `ovs_training` in a MaskCLIP++ pairing.

Module names follow MaskCLIP++ (`psm/linear.py`: `corr_proj_in.0`, `corr_proj_out.0`; `psm/pesudo_text.py`:
`img_proj`, `img2text`, `ln_1`) so its PSM weights load without renaming.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

MAX_LOGIT_SCALE = 100.0


def scaled_cosine(mask_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor) -> Tensor:
    """`[B, Q, D]` x `[S, T, D]` -> `[B, Q, S, T]` cosine x `min(exp(logit_scale), 100)`.

    The text embeddings are expected L2-normalised per sentence; the mask embeddings are normalised here.
    """
    s, t, d = text_embeddings.shape
    m = F.normalize(mask_embeddings, dim=-1)
    cos = m @ text_embeddings.reshape(s * t, d).transpose(0, 1).to(m.dtype)  # B, Q, S*T
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).to(cos.dtype)
    return (cos * scale).reshape(*m.shape[:-1], s, t)


class IdentityPSM(nn.Module):
    """No learned similarity: scaled cosine averaged over templates (MaskCLIP++ `DummyPSM` with the logit scale)."""

    def forward(self, mask_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor,
                patch_embeddings: Optional[Tensor] = None) -> Tensor:
        return scaled_cosine(mask_embeddings, text_embeddings, logit_scale).mean(dim=-1)


class LinearPSM(nn.Module):
    """`Linear(T -> width) -> Linear(width -> 1)` on the template axis of the scaled cosine, no nonlinearity.

    It acts on similarity values only and never mixes embedding dimensions, so with one template it is an affine
    map `a * s + b` that keeps CLIP's ordering when `a > 0` (MaskCLIP++ "consistency alignment").
    T is the number of templates of the checkpoint (corrections.md 8).
    """

    def __init__(self, num_templates: int, width: int = 768):
        super().__init__()
        self.num_templates = num_templates
        self.corr_proj_in = nn.Sequential(nn.Linear(num_templates, width))
        self.corr_proj_out = nn.Sequential(nn.Linear(width, 1))

    def forward(self, mask_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor,
                patch_embeddings: Optional[Tensor] = None) -> Tensor:
        if text_embeddings.shape[1] != self.num_templates:
            raise ValueError(f"text_embeddings has {text_embeddings.shape[1]} templates, this LinearPSM was built "
                             f"for {self.num_templates}")
        corr = scaled_cosine(mask_embeddings, text_embeddings, logit_scale)
        return self.corr_proj_out(self.corr_proj_in(corr)).squeeze(-1)


class PseudoTextPSM(nn.Module):
    """ConvNeXt PSM: `t' = LayerNorm(t + MHA(q=t, k=v=Linear(normalize(patches))))`, logits `<normalize(E_m), t'>`.

    `t` is the L2-normalised mean over templates. No logit scale and `t'` is not L2-normalised: the LayerNorm
    output's norm (about sqrt(D)) is the implicit temperature (corrections.md 8). The incoming cosine is unused.
    """

    def __init__(self, text_dim: int, image_dim: int, num_heads: int = 8):
        super().__init__()
        self.img_proj = nn.Linear(image_dim, text_dim, bias=False)
        self.img2text = nn.MultiheadAttention(text_dim, num_heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(text_dim)

    def refine_text(self, text_embeddings: Tensor, patch_embeddings: Tensor) -> Tensor:
        """`[S, T, D]`, `[B, HW, D_img]` -> per-image pseudo text `[B, S, D]`."""
        t = F.normalize(text_embeddings.mean(dim=1), dim=-1)
        t = t.unsqueeze(0).expand(patch_embeddings.shape[0], -1, -1).to(patch_embeddings.dtype)
        kv = self.img_proj(F.normalize(patch_embeddings, dim=-1))
        attended = self.img2text(t, kv, kv, need_weights=False)[0]
        return self.ln_1(t + attended)

    def forward(self, mask_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Optional[Tensor] = None,
                patch_embeddings: Optional[Tensor] = None) -> Tensor:
        if patch_embeddings is None:
            raise ValueError("PseudoTextPSM needs patch_embeddings (ConvNeXt encode_masks output)")
        text = self.refine_text(text_embeddings, patch_embeddings)  # B, S, D
        return F.normalize(mask_embeddings, dim=-1) @ text.transpose(1, 2)


class CDTPSM(nn.Module):
    """MAFT+'s Content-Dependent Transfer as a PSM: `t' = CDT(t, F)`, logits `min(exp(s), 100) * <normalize(E_m), t'>`.

    `t` is the L2-normalised mean over templates (FC-CLIP / MAFT+ text classifier), `F` the per-pixel patch
    embeddings on their `[h, w]` grid (the CDT's sine position encoding needs the layout: pass `patch_grid`).
    The runtime module is reused as is (`ContentDependentTransfer`); MAFT+'s void row is left out because every
    row attends and normalises on its own, so it changes no class row (the void probability is the generator's).
    `t'` is not re-normalised, as in MAFT+ `get_classification_logits`. Runs per image, after the text cache.
    """

    needs_patch_grid = True

    def __init__(self, dim: int, num_heads: int = 8, panoptic: bool = False):
        super().__init__()
        from ovs_ros.models.maftp.cdt import ContentDependentTransfer

        self.cdt = ContentDependentTransfer(dim, num_heads, panoptic=panoptic)

    def transferred_text(self, text_embeddings: Tensor, patch_embeddings: Tensor, patch_grid) -> Tensor:
        """`[S, T, D]`, `[B, HW, D]`, (h, w) -> per-image text classifier `[B, S, D]`."""
        b, hw, d = patch_embeddings.shape
        h, w = (int(v) for v in patch_grid)
        if h * w != hw:
            raise ValueError(f"patch_grid {h}x{w} does not hold {hw} patch embeddings")
        dense = patch_embeddings.transpose(1, 2).reshape(b, d, h, w)
        return self.cdt(dense, F.normalize(text_embeddings.mean(dim=1), dim=-1))

    def forward(self, mask_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor,
                patch_embeddings: Optional[Tensor] = None, patch_grid=None) -> Tensor:
        if patch_embeddings is None or patch_grid is None:
            raise ValueError("CDTPSM needs patch_embeddings and patch_grid (ConvNeXt encode_masks output)")
        text = self.transferred_text(text_embeddings, patch_embeddings, patch_grid)
        cos = F.normalize(mask_embeddings, dim=-1).to(text.dtype) @ text.transpose(1, 2)
        return cos * logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).to(cos.dtype)


def patch_grid_of(image_hw, num_patches: int) -> tuple:
    """The `(h, w)` feature grid of `num_patches` patches over a `[H, W]` input (one stride on both axes)."""
    height, width = (int(v) for v in image_hw)
    stride = (height * width / max(int(num_patches), 1)) ** 0.5
    grid = (round(height / stride), round(width / stride))
    if grid[0] * grid[1] != int(num_patches):
        raise ValueError(f"{num_patches} patches do not tile a {height}x{width} input with one stride")
    return grid


def mask_class_logits(mask_embeddings: Tensor, text_embeddings: Tensor, synonym_class_index: Tensor,
                      num_classes: int, psm: nn.Module, logit_scale: Tensor,
                      patch_embeddings: Optional[Tensor] = None, patch_grid=None) -> Tensor:
    """Class logits of each mask: PSM per synonym, then the max over each class's synonyms.

    Args:
        mask_embeddings: `[B, Q, D]` (not normalised).
        text_embeddings: `[S, T, D]` L2-normalised per sentence.
        synonym_class_index: `[S]` long, the class of each synonym, in `[0, num_classes)`.
        num_classes: K.
        psm: `IdentityPSM`, `LinearPSM` or `PseudoTextPSM`.
        logit_scale: CLIP's log temperature (ignored by `PseudoTextPSM`).
        patch_embeddings: `[B, HW, D]` for `PseudoTextPSM` and `CDTPSM`.
        patch_grid: `(h, w)` of the patch embeddings, for the PSMs that declare `needs_patch_grid` (`CDTPSM`).

    Returns:
        `[B, Q, K]`; a class without synonyms gets -inf.
    """
    if mask_embeddings.dim() != 3:
        raise ValueError(f"mask_embeddings must be [B, Q, D], got {tuple(mask_embeddings.shape)}")
    if text_embeddings.dim() != 3:
        raise ValueError(f"text_embeddings must be [S, T, D], got {tuple(text_embeddings.shape)}")
    if synonym_class_index.dim() != 1 or synonym_class_index.shape[0] != text_embeddings.shape[0]:
        raise ValueError(f"synonym_class_index must be [S] with S = {text_embeddings.shape[0]}, "
                         f"got {tuple(synonym_class_index.shape)}")
    grid = {"patch_grid": patch_grid} if getattr(psm, "needs_patch_grid", False) else {}
    syn_logits = psm(mask_embeddings, text_embeddings, logit_scale, patch_embeddings=patch_embeddings, **grid)  # B,Q,S
    b, q, s = syn_logits.shape
    index = synonym_class_index.to(syn_logits.device).view(1, 1, s).expand(b, q, s)
    out = syn_logits.new_full((b, q, num_classes), float("-inf"))
    return out.scatter_reduce(-1, index, syn_logits, reduce="amax", include_self=True)


PSM_KINDS = ("identity", "linear", "pseudo_text", "cdt", "cdt_panoptic")


def build_psm(kind: str, *, num_templates: Optional[int] = None, text_dim: Optional[int] = None,
              image_dim: Optional[int] = None) -> nn.Module:
    """A PSM by name; `linear` needs the checkpoint's template count, `pseudo_text` the embedding sizes."""
    if kind == "identity":
        return IdentityPSM()
    if kind == "linear":
        if not num_templates:
            raise ValueError("a linear PSM needs num_templates (the template set of its checkpoint)")
        return LinearPSM(num_templates)
    if kind == "pseudo_text":
        if not (text_dim and image_dim):
            raise ValueError("a pseudo_text PSM needs text_dim and image_dim")
        return PseudoTextPSM(text_dim, image_dim)
    if kind in ("cdt", "cdt_panoptic"):  # MAFT+ semantic LN(t + W A + b) / panoptic t + LN(W A + b)
        if not text_dim:
            raise ValueError(f"a {kind} PSM needs text_dim")
        return CDTPSM(text_dim, panoptic=kind == "cdt_panoptic")
    raise ValueError(f"unknown PSM {kind!r}; choose from {PSM_KINDS}")
