"""MaskCLIP++ EVA and ConvNeXt checkpoints -> our names (explicit key maps that fail on any unmatched key, style.md
rule 5).

MaskCLIP++ (`maskclippp/utils/ckpt.py`) saves `{"model": {...}}` with `visual_encoder.proxy.*` (the vendored
EVA-CLIP visual tower), `visual_encoder.mask_logit_scale` `[3, heads]` and `psm.*`. EVA-CLIP names differ from timm's
(corrections.md 4): `attn.q_bias`/`v_bias` -> `attn.q_proj.bias`/`v_proj.bias`; `mlp.w1`/`w2`/`w3`/`ffn_ln` ->
`mlp.fc1_g`/`fc1_x`/`fc2`/`norm` (EVA-CLIP SwiGLU: `w3(ffn_ln(silu(w1 x) * w2 x))`, timm: `fc2(norm(silu(fc1_g x) *
fc1_x x))`); `attn.inner_attn_ln` -> `attn.norm`; `head` -> `trunk.head`. Our visual names are those of open_clip's
`TimmModel` (`trunk.*`), i.e. `ClipClassifier.model.visual`. EVA01-g (EVA-CLIP `subln` and `naiveswiglu` off)
has a fused `attn.qkv` (no bias) with separate `q_bias` / `v_bias` and a plain `mlp.fc1` / `fc2`, no RoPE: timm's
`eva_giant_patch14_224` (`qkv_fused=True`, plain `Mlp`) uses exactly these names, so its rules keep them; which rule
set applies follows the file's blocks (`attn.qkv.weight` or `attn.q_proj.weight`). `_wtext` files also hold the
tuned text tower (`text_encoder.*`, `convert_text.py`).

ConvNeXt checkpoints (`vencoder/clip_convnext.py`): the reference builds the tower with open_clip too
(`proxy = open_clip...visual`, a `TimmModel` around timm's ConvNeXt), so `visual_encoder.proxy.<key>` is our
`model.visual.<key>` unchanged. `saved_modules()` stores `state_dict()` of the whole encoder whatever was trained, so
the file holds the whole visual tower (loaded exactly); the PSM is `PseudoTextPSM` (`img_proj`, `img2text`, `ln_1`);
there is no `mask_logit_scale`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .convert_text import load_maskclippp_text_tower, split_maskclippp_text_state_dict

VISUAL_PREFIX = "visual_encoder.proxy."
MASK_LOGIT_SCALE_KEY = "visual_encoder.mask_logit_scale"
PSM_PREFIX = "psm."

# EVA-CLIP visual key (after the prefix) -> open_clip TimmModel key. Patterns are anchored regexes.
_EVA_BLOCK_RENAMES = (
    (r"norm1\.(weight|bias)", r"norm1.\1"),
    (r"norm2\.(weight|bias)", r"norm2.\1"),
    (r"attn\.q_proj\.weight", r"attn.q_proj.weight"),
    (r"attn\.k_proj\.weight", r"attn.k_proj.weight"),
    (r"attn\.v_proj\.weight", r"attn.v_proj.weight"),
    (r"attn\.q_bias", r"attn.q_proj.bias"),
    (r"attn\.v_bias", r"attn.v_proj.bias"),
    (r"attn\.inner_attn_ln\.(weight|bias)", r"attn.norm.\1"),
    (r"attn\.proj\.(weight|bias)", r"attn.proj.\1"),
    (r"mlp\.w1\.(weight|bias)", r"mlp.fc1_g.\1"),
    (r"mlp\.w2\.(weight|bias)", r"mlp.fc1_x.\1"),
    (r"mlp\.w3\.(weight|bias)", r"mlp.fc2.\1"),
    (r"mlp\.ffn_ln\.(weight|bias)", r"mlp.norm.\1"),
)
_EVA_TOP_RENAMES = (
    (r"patch_embed\.proj\.(weight|bias)", r"trunk.patch_embed.proj.\1"),
    (r"cls_token", r"trunk.cls_token"),
    (r"pos_embed", r"trunk.pos_embed"),
    (r"norm\.(weight|bias)", r"trunk.norm.\1"),
    (r"head\.(weight|bias)", r"trunk.head.\1"),
)
# EVA01 (fused qkv, plain MLP): EVA-CLIP and timm agree on every block name.
_EVA01_BLOCK_RENAMES = (
    (r"norm1\.(weight|bias)", r"norm1.\1"),
    (r"norm2\.(weight|bias)", r"norm2.\1"),
    (r"attn\.qkv\.weight", r"attn.qkv.weight"),
    (r"attn\.q_bias", r"attn.q_bias"),
    (r"attn\.v_bias", r"attn.v_bias"),
    (r"attn\.proj\.(weight|bias)", r"attn.proj.\1"),
    (r"mlp\.fc1\.(weight|bias)", r"mlp.fc1.\1"),
    (r"mlp\.fc2\.(weight|bias)", r"mlp.fc2.\1"),
)
EVA_VARIANTS = {"eva02": _EVA_BLOCK_RENAMES, "eva01": _EVA01_BLOCK_RENAMES}
# Non-persistent in EVA-CLIP (recomputed from the grid, `eva_clip/rope.py`): skipped by name if a file has them.
_EVA_IGNORED = (r"rope\.freqs_cos", r"rope\.freqs_sin")


def eva_variant(keys) -> str:
    """"eva01" when the blocks hold a fused `attn.qkv.weight` (EVA-CLIP visual names or timm's), else "eva02"."""
    return "eva01" if any(re.search(r"(^|\.)blocks\.\d+\.attn\.qkv\.weight$", k) for k in keys) else "eva02"


def _rename_eva_visual(key: str, block_renames=_EVA_BLOCK_RENAMES) -> Optional[str]:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m:
        for pattern, repl in block_renames:
            if re.fullmatch(pattern, m.group(2)):
                return f"trunk.blocks.{m.group(1)}." + re.sub(pattern, repl, m.group(2))
        return None
    for pattern, repl in _EVA_TOP_RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def convert_maskclippp_eva_state_dict(state_dict: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor],
                                                                               Optional[Tensor]]:
    """Split and rename a MaskCLIP++ EVA state dict.

    Args:
        state_dict: the checkpoint's `model` dict (a `{"model": ...}` wrapper is unwrapped).

    Returns:
        (visual_sd for `ClipClassifier.model.visual`, psm_sd for the PSM, mask_logit_scale `[blocks, heads]` or None).

    The block rules are EVA02's or EVA01's (`eva_variant` of the file's keys).

    Raises:
        KeyError: naming every key that matches no rule (text-tower keys included: `load_maskclippp_checkpoint`
            takes them out first with `split_maskclippp_text_state_dict`).
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    block_renames = EVA_VARIANTS[eva_variant(state_dict)]
    visual: Dict[str, Tensor] = {}
    psm: Dict[str, Tensor] = {}
    mask_logit_scale: Optional[Tensor] = None
    unmatched = []
    for key, value in state_dict.items():
        if key == MASK_LOGIT_SCALE_KEY:
            mask_logit_scale = value
        elif key.startswith(PSM_PREFIX):
            psm[key[len(PSM_PREFIX):]] = value
        elif key.startswith(VISUAL_PREFIX):
            sub = key[len(VISUAL_PREFIX):]
            if any(re.fullmatch(p, sub) for p in _EVA_IGNORED):
                continue
            new = _rename_eva_visual(sub, block_renames)
            if new is None:
                unmatched.append(key)
            elif new in visual:
                raise KeyError(f"two checkpoint keys map to {new!r}")
            else:
                visual[new] = value
        else:
            unmatched.append(key)
    if unmatched:
        raise KeyError(f"unmatched MaskCLIP++ EVA checkpoint keys: {sorted(unmatched)}")
    return visual, psm, mask_logit_scale


# open_clip TimmModel around timm ConvNeXt (`convnext_base_w_320`, `convnext_large_d_320`, `convnext_xxlarge`): the
# only visual names a MaskCLIP++ ConvNeXt checkpoint may hold (after the prefix; kept as they are).
_CONVNEXT_VISUAL_KEYS = (
    r"trunk\.stem\.[01]\.(weight|bias)",
    r"trunk\.stages\.\d+\.downsample\.[01]\.(weight|bias)",
    r"trunk\.stages\.\d+\.blocks\.\d+\.(gamma|conv_dw\.(weight|bias)|norm\.(weight|bias)|mlp\.fc[12]\.(weight|bias))",
    r"trunk\.head\.norm\.(weight|bias)",
    r"head\.proj\.(weight|bias)",  # timm_proj "linear" (convnext_base_w_320, convnext_xxlarge)
    r"head\.mlp\.fc[12]\.(weight|bias)",  # timm_proj "mlp" (convnext_large_d_320)
)
# MaskCLIP++ `psm/pesudo_text.py` PseudoTextPSM with CORR_RESIDUAL and USE_LOGIT_SCALE off (the ConvNeXt configs):
# the same module names as ours.
_PSEUDO_TEXT_PSM_KEYS = (
    "img_proj.weight",
    "img2text.in_proj_weight",
    "img2text.in_proj_bias",
    "img2text.out_proj.weight",
    "img2text.out_proj.bias",
    "ln_1.weight",
    "ln_1.bias",
)
_PSEUDO_TEXT_UNSUPPORTED = {"logit_scale": "PSM.USE_LOGIT_SCALE", "corrs_in": "PSM.CORR_RESIDUAL",
                            "corrs_out": "PSM.CORR_RESIDUAL"}


def _unwrap(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        return state_dict["model"]
    return state_dict


def convert_maskclippp_convnext_state_dict(state_dict: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor],
                                                                                    Dict[str, Tensor]]:
    """Split a MaskCLIP++ ConvNeXt state dict into our visual tower and PseudoTextPSM names.

    Args:
        state_dict: the checkpoint's `model` dict (a `{"model": ...}` wrapper is unwrapped).

    Returns:
        (visual_sd for `ClipClassifier.model.visual`, psm_sd for `PseudoTextPSM`).

    Raises:
        KeyError: naming every key that matches no rule (an EVA checkpoint's keys, a tuned text tower, PSM options
            the ConvNeXt configs leave off).
    """
    visual: Dict[str, Tensor] = {}
    psm: Dict[str, Tensor] = {}
    unmatched = []
    unsupported = set()
    for key, value in _unwrap(state_dict).items():
        if key.startswith(VISUAL_PREFIX) and any(re.fullmatch(p, key[len(VISUAL_PREFIX):])
                                                 for p in _CONVNEXT_VISUAL_KEYS):
            visual[key[len(VISUAL_PREFIX):]] = value
        elif key.startswith(PSM_PREFIX) and key[len(PSM_PREFIX):] in _PSEUDO_TEXT_PSM_KEYS:
            psm[key[len(PSM_PREFIX):]] = value
        else:
            unmatched.append(key)
            if key.startswith(PSM_PREFIX) and key[len(PSM_PREFIX):].split(".")[0] in _PSEUDO_TEXT_UNSUPPORTED:
                unsupported.add(_PSEUDO_TEXT_UNSUPPORTED[key[len(PSM_PREFIX):].split(".")[0]])
    if unmatched:
        hint = f" (trained with {sorted(unsupported)} on, which PseudoTextPSM does not support)" if unsupported else ""
        raise KeyError(f"unmatched MaskCLIP++ ConvNeXt checkpoint keys{hint}: {sorted(unmatched)}")
    return visual, psm


def maskclippp_checkpoint_family(state_dict: Dict[str, Tensor]) -> Optional[str]:
    """"eva" or "convnext" from a MaskCLIP++ state dict's visual keys; None when neither layout shows."""
    keys = list(_unwrap(state_dict))
    if MASK_LOGIT_SCALE_KEY in keys or any(k.startswith(VISUAL_PREFIX + "blocks.") for k in keys):
        return "eva"
    if any(k.startswith(VISUAL_PREFIX + "trunk.stages.") for k in keys):
        return "convnext"
    return None


def _load_exactly(module: nn.Module, state_dict: Dict[str, Tensor], what: str, path: Path) -> None:
    """`load_state_dict` that first names every missing, unexpected or wrongly shaped key."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    if missing or unexpected:
        raise KeyError(f"{path}: the {what} keys do not match the checkpoint's: missing from the file {missing}, "
                       f"not in the {what} {unexpected}")
    bad = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items()
                 if tuple(v.shape) != tuple(own[k].shape))
    if bad:
        raise ValueError(f"{path}: {what} shape mismatch (file vs model): {bad}")
    module.load_state_dict(state_dict, strict=True)


def _load_file(path: Path) -> Dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load_maskclippp_checkpoint(classifier: nn.Module, psm: Optional[nn.Module], path: Union[str, Path]) -> None:
    """Load a MaskCLIP++ checkpoint (`.pth` via `torch.load(weights_only=True)`, or `.safetensors`) exactly.

    The key map follows the classifier's family: EVA (`convert_maskclippp_eva_state_dict`) or ConvNeXt
    (`convert_maskclippp_convnext_state_dict`); MaskCLIP++ released no other CLIP-V checkpoints. The visual tower
    must hold every converted key and nothing else (MaskCLIP++ saves the whole encoder), and so must the PSM:
    a PSM with weights needs them in the file, and a file with PSM weights needs a PSM (`psm=None` only for a file
    without them). A `_wtext` file's text tower replaces the base one's tensors (`load_maskclippp_text_tower`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a classifier family without a key map, a checkpoint of the other family, shape mismatches.
        KeyError: naming every unmatched, missing or unexpected key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MaskCLIP++ checkpoint not found: {path}")
    family = getattr(classifier, "family", None)
    if family not in ("eva", "convnext"):
        raise ValueError("MaskCLIP++ checkpoints load through the EVA or the ConvNeXt key map (the CLIPs it released); "
                         f"got a classifier of family {family!r}")
    state_dict = _unwrap(_load_file(path))
    layout = maskclippp_checkpoint_family(state_dict)
    if layout is not None and layout != family:
        name = getattr(getattr(classifier, "config", None), "model_name", None)
        raise ValueError(f"{path} is a MaskCLIP++ {layout} checkpoint, but the classifier is a {family} CLIP "
                         f"({name!r}): the model card's architecture must be the CLIP the file was trained on")
    text_sd, text_logit_scale, state_dict = split_maskclippp_text_state_dict(state_dict)
    mask_logit_scale = None
    if family == "eva":
        file_variant, model_variant = eva_variant(state_dict), eva_variant(classifier.model.visual.state_dict())
        if file_variant != model_variant:
            name = getattr(getattr(classifier, "config", None), "model_name", None)
            raise ValueError(f"{path} is a MaskCLIP++ {file_variant.upper()} checkpoint, but the classifier is an "
                             f"{model_variant.upper()} CLIP ({name!r}): the model card's architecture must be the "
                             "CLIP the file was trained on")
        visual_sd, psm_sd, mask_logit_scale = convert_maskclippp_eva_state_dict(state_dict)
    else:
        visual_sd, psm_sd = convert_maskclippp_convnext_state_dict(state_dict)
    _load_exactly(classifier.model.visual, visual_sd, "visual tower", path)
    if text_sd or text_logit_scale is not None:
        load_maskclippp_text_tower(classifier.model, text_sd, text_logit_scale, path)
    if psm is None:
        if psm_sd:
            raise ValueError(f"{path} holds PSM weights ({sorted(psm_sd)[:3]}...) but no psm was given")
    else:
        _load_exactly(psm, psm_sd, type(psm).__name__, path)
    if mask_logit_scale is not None:
        target = classifier.mask_logit_scale
        if tuple(mask_logit_scale.shape) != tuple(target.shape):
            raise ValueError(f"mask_logit_scale shape {tuple(mask_logit_scale.shape)} != {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(mask_logit_scale.to(target.dtype))


# Classifier checkpoints written by the training package (ovs_training.export): only the tuned tensors under our own
# parameter names, plus the PSM under "psm."; the base CLIP weights come from open_clip (the card's base tag).
OVS_FORMAT = "ovs_safetensors"
OVS_FORMAT_VERSION = "1"
PSM_PREFIX = "psm."


def load_ovs_classifier_checkpoint(classifier: nn.Module, psm: Optional[nn.Module], path: Union[str, Path]) -> None:
    """Load an "ovs_safetensors" file into a built classifier and PSM.

    The file holds a subset of the classifier's parameters (the tuned ones; the rest stay as built from the base
    CLIP weights) and the PSM's full state under `psm.`. Every classifier key must exist with the same shape
    and the PSM loads strictly; anything unmatched raises, listing the keys (house rule 5).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != OVS_FORMAT:
        raise ValueError(f"{path}: not an {OVS_FORMAT} file (metadata format={metadata.get('format')!r})")
    if metadata.get("format_version") != OVS_FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {metadata.get('format_version')!r}, expected {OVS_FORMAT_VERSION}")
    state = load_file(str(path), device="cpu")
    psm_sd = {k[len(PSM_PREFIX):]: v for k, v in state.items() if k.startswith(PSM_PREFIX)}
    clf_sd = {k: v for k, v in state.items() if not k.startswith(PSM_PREFIX)}
    if psm_sd:
        if psm is None:
            raise ValueError(f"{path} holds PSM weights but no psm was given")
        psm.load_state_dict(psm_sd, strict=True)
    own = classifier.state_dict()
    unknown = sorted(k for k in clf_sd if k not in own)
    if unknown:
        raise KeyError(f"{path}: keys not in the classifier: {unknown}")
    bad = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in clf_sd.items()
                 if tuple(v.shape) != tuple(own[k].shape))
    if bad:
        raise ValueError(f"{path}: shape mismatch: {bad}")
    classifier.load_state_dict(clf_sd, strict=False)
