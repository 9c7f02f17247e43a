"""The fine-tuned text tower of MaskCLIP++ `_wtext` checkpoints -> open_clip's text tower (explicit key map that
fails on any unmatched key, style.md rule 5).

MaskCLIP++ keeps a text encoder in the model only when it is tuned (`maskclippp.py`: `FINETUNE_TYPE != "none"`), and
`saved_modules()` then stores its whole `state_dict()`: `text_encoder.proxy.*` (EVA-CLIP's `TextTransformer`,
`tencoder/eva_clip.py`) and `text_encoder.logit_scale` (CLIP's, frozen). EVA-CLIP's text tower names its tensors as
open_clip's `TextTransformer` does (`token_embedding`, `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.
in_proj_weight/bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection`; its `xattn`
attention keeps `nn.MultiheadAttention`'s names and q|k|v order), so each rule keeps the name; the rules still list
every name, so a file of another layout is refused, not half loaded.

What was tuned: `_freeze("attention")` sets `requires_grad` only on names with `attn` inside `transformer`, and
leaves every other `transformer` tensor as built (trainable): so ln_1, ln_2, mlp, `attn.in_proj_weight` (not
`in_proj_bias`, not `out_proj`) and `positional_embedding` (corrections.md 17). Those must be in the file; the
frozen rest (equal to the base CLIP's) is loaded too when present.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

TEXT_PREFIX = "text_encoder.proxy."
TEXT_LOGIT_SCALE_KEY = "text_encoder.logit_scale"

# EVA-CLIP TextTransformer names (after the prefix); open_clip's are the same.
_TEXT_KEYS = (
    r"token_embedding\.weight",
    r"positional_embedding",
    r"transformer\.resblocks\.\d+\.(ln_1|ln_2)\.(weight|bias)",
    r"transformer\.resblocks\.\d+\.attn\.in_proj_(weight|bias)",
    r"transformer\.resblocks\.\d+\.attn\.out_proj\.(weight|bias)",
    r"transformer\.resblocks\.\d+\.mlp\.(c_fc|c_proj)\.(weight|bias)",
    r"ln_final\.(weight|bias)",
    r"text_projection",
)
# The causal mask is non-persistent in EVA-CLIP and open_clip (rebuilt at init): skipped by name if a file has it.
_TEXT_IGNORED = (r"attn_mask",)
# The tensors MaskCLIP++'s `_wtext` training tuned (see the module docstring): a file must hold each of them.
WTEXT_TUNED_KEYS = (
    r"positional_embedding",
    r"transformer\.resblocks\.\d+\.(ln_1|ln_2)\.(weight|bias)",
    r"transformer\.resblocks\.\d+\.mlp\.(c_fc|c_proj)\.(weight|bias)",
    r"transformer\.resblocks\.\d+\.attn\.in_proj_weight",
)


def _matches(key: str, patterns) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def split_maskclippp_text_state_dict(state_dict: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Optional[Tensor],
                                                                             Dict[str, Tensor]]:
    """Take the text-tower keys out of a MaskCLIP++ state dict.

    Returns:
        (text_sd with names relative to open_clip's text tower, CLIP's logit_scale or None, the other keys).

    Raises:
        KeyError: naming every `text_encoder.*` key that matches no rule.
    """
    text: Dict[str, Tensor] = {}
    rest: Dict[str, Tensor] = {}
    logit_scale: Optional[Tensor] = None
    unmatched = []
    for key, value in state_dict.items():
        if key == TEXT_LOGIT_SCALE_KEY:
            logit_scale = value
        elif key.startswith(TEXT_PREFIX):
            sub = key[len(TEXT_PREFIX):]
            if _matches(sub, _TEXT_IGNORED):
                continue
            if _matches(sub, _TEXT_KEYS):
                text[sub] = value
            else:
                unmatched.append(key)
        elif key.startswith("text_encoder."):
            unmatched.append(key)
        else:
            rest[key] = value
    if unmatched:
        raise KeyError(f"unmatched MaskCLIP++ text-tower keys: {sorted(unmatched)}")
    return text, logit_scale, rest


def open_clip_text_tower(model: nn.Module) -> nn.Module:
    """The module holding open_clip's text names: `model.text` (`CustomTextCLIP`, every EVA) or the CLIP itself."""
    return model.text if isinstance(getattr(model, "text", None), nn.Module) else model


def load_maskclippp_text_tower(model: nn.Module, text_sd: Dict[str, Tensor], logit_scale: Optional[Tensor],
                               path: Path) -> None:
    """Copy a converted `_wtext` text tower (and CLIP's logit scale) into an open_clip model.

    Every file tensor must exist in the text tower with its shape, and every tuned tensor (`WTEXT_TUNED_KEYS`) of the
    tower must be in the file; the copy goes through `load_state_dict`, so the text fingerprint (and with it the text
    embedding cache key) follows the new weights.

    Raises:
        KeyError: file keys not in the tower, or tuned tower tensors missing from the file (both named).
        ValueError: shape mismatches.
    """
    tower = open_clip_text_tower(model)
    own = {k: v for k, v in tower.state_dict().items() if not k.startswith("visual.") and k != "logit_scale"}
    unknown = sorted(k for k in text_sd if k not in own)
    missing = sorted(k for k in own if _matches(k, WTEXT_TUNED_KEYS) and k not in text_sd)
    if unknown or missing:
        raise KeyError(f"{path}: the text-tower keys do not match the checkpoint's: tuned tensors missing from the "
                       f"file {missing}, not in the text tower {unknown}")
    bad = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in text_sd.items()
                 if tuple(v.shape) != tuple(own[k].shape))
    if logit_scale is not None and logit_scale.numel() != model.logit_scale.numel():
        bad.append(f"logit_scale {tuple(logit_scale.shape)} vs {tuple(model.logit_scale.shape)}")
    if bad:
        raise ValueError(f"{path}: text tower shape mismatch (file vs model): {bad}")
    tower.load_state_dict(text_sd, strict=False)
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.copy_(logit_scale.reshape(model.logit_scale.shape).to(model.logit_scale.dtype))
