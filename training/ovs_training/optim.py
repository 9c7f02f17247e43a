"""What the MaskCLIP++ recipe trains, at which LR, and the LR schedule (seed-spec 2.3; corrections.md 16-18).

* EVA (timm `Eva` trunk): `pos_embed` and the attention `q_proj` / `v_proj` **weights** (not their biases) at
  x0.01 (corrections.md 17).
* OpenAI-style ViT: the fused attention `in_proj_weight` / `in_proj_bias` and `positional_embedding` at x0.01
  (MaskCLIP++ `clip_vit.py` `_freeze('attention')`: names with `in_proj`, `q_proj`, `v_proj` or `position`).
* ConvNeXt: every CLIP-V tensor at x0.001.
* PSM and the mask logit scale: x1 (base LR 2e-4).
* CLIP's `logit_scale`: never. Text tower: frozen, or with `train_text` the EVA `_wtext` set (ln_1, ln_2, mlp,
  attn.in_proj_weight, positional_embedding) at `text_lr_multiplier`; `in_proj_bias` stays frozen as in MaskCLIP++
  `tencoder/eva_clip.py` (corrections.md 17).

Weight decay 0.05, 0 on norm layers, biases and position embeddings / CLS token (detectron2 / MaskCLIP++
`build_optimizer`: norm modules, `no_weight_decay()` keys, encoder biases). The schedule is a multiplier going
from 1 to `end` by cosine, applied to every group (corrections.md 16), with no warm-up; or MAFT+'s warm-up poly
(`scheduler: warmup_poly`).

FISA / FOV-Seg (SIMO, `fovseg_lr_multipliers`): CLIP-V's query projections f_q only (EVA `q_proj` weight and bias;
OpenAI ViT rows [0:C] of the fused `in_proj`, split off by `fovseg.split_query_projections`) at x0.1, and TeVA at x1.
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Tuple

import torch
from torch import nn

DEFAULT_CLIP_LR_MULTIPLIER = {"eva": 0.01, "vit": 0.01, "convnext": 0.001}

_EVA_VISUAL = (r"model\.visual\.trunk\.pos_embed", r"model\.visual\.trunk\.blocks\.\d+\.attn\.[qv]_proj\.weight")
_VIT_VISUAL = (r"model\.visual\.positional_embedding",
               r"model\.visual\.transformer\.resblocks\.\d+\.attn\.in_proj_(weight|bias)")
_TEXT_WTEXT = (r"model\.(text\.)?positional_embedding",
               r"model\.(text\.)?transformer\.resblocks\.\d+\.(ln_1|ln_2|mlp)\..+",
               r"model\.(text\.)?transformer\.resblocks\.\d+\.attn\.in_proj_weight")
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm)
_NO_DECAY_NAMES = re.compile(r"(^|\.)(pos_embed|positional_embedding|cls_token|class_embedding)$")
_EVA_QUERY = (r"model\.visual\.trunk\.blocks\.\d+\.attn\.q_proj\.(weight|bias)",)
_VIT_QUERY = (r"model\.visual\.transformer\.resblocks\.\d+\.attn\.parametrizations\.in_proj_(weight|bias)\.original",)


def _matches(name: str, patterns) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def classifier_lr_multipliers(classifier: nn.Module, *, clip_lr_multiplier=None, train_text: bool = False,
                              text_lr_multiplier: float = 0.01) -> Dict[str, float]:
    """Names (as in `classifier.named_parameters()`) of the tensors to train -> LR multiplier."""
    family = classifier.family
    clip_mult = DEFAULT_CLIP_LR_MULTIPLIER[family] if clip_lr_multiplier is None else float(clip_lr_multiplier)
    out: Dict[str, float] = {}
    for name, _ in classifier.named_parameters():
        if name == "mask_logit_scale":
            out[name] = 1.0
        elif name.startswith("model.visual."):
            if family == "convnext" or (family == "eva" and _matches(name, _EVA_VISUAL)) or (
                    family == "vit" and _matches(name, _VIT_VISUAL)):
                out[name] = clip_mult
        elif train_text and _matches(name, _TEXT_WTEXT):
            out[name] = float(text_lr_multiplier)
    return out


def fovseg_lr_multipliers(classifier: nn.Module, *, query_lr_multiplier: float = 0.1) -> Dict[str, float]:
    """SIMO: f_q of every CLIP-V block x `query_lr_multiplier`, every TeVA tensor x1; nothing else (the OpenAI
    ViT's fused projection must have been split first, `fovseg.split_query_projections`)."""
    patterns = {"eva": _EVA_QUERY, "vit": _VIT_QUERY}.get(classifier.family)
    if patterns is None:
        raise ValueError(f"FISA / FOV-Seg tune a ViT CLIP's query projections; {classifier.family} has none")
    out: Dict[str, float] = {}
    for name, _ in classifier.named_parameters():
        if name.startswith("teva."):
            out[name] = 1.0
        elif _matches(name, patterns):
            out[name] = float(query_lr_multiplier)
    if not any(not n.startswith("teva.") for n in out):
        raise ValueError("no query projection found: split the fused in_proj first (fovseg.split_query_projections)")
    return out


def apply_trainable(model: nn.Module, lr_multipliers: Dict[str, float]) -> None:
    """`requires_grad` True exactly for the named parameters of `model`, False for every other one."""
    names = {n for n, _ in model.named_parameters()}
    unknown = sorted(set(lr_multipliers) - names)
    if unknown:
        raise KeyError(f"no such parameters: {unknown}")
    for name, p in model.named_parameters():
        p.requires_grad_(name in lr_multipliers)


def _no_weight_decay_names(model: nn.Module) -> set:
    out = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            split_bias = p_name == "original" and mod_name.endswith("_bias")  # a parametrised (split) bias
            if isinstance(module, _NORM_TYPES) or p_name.endswith("bias") or split_bias or _NO_DECAY_NAMES.search(full):
                out.add(full)
            elif "norm" in mod_name.rsplit(".", 1)[-1]:  # timm/open_clip norms wrapped in custom classes
                out.add(full)
    return out


def build_param_groups(model: nn.Module, lr_multipliers: Dict[str, float], *, base_lr: float,
                       weight_decay: float) -> List[dict]:
    """AdamW parameter groups, one per (LR multiplier, weight decay); each group records its `lr_multiplier`
    and `param_names`, and starts at `lr = base_lr * lr_multiplier`."""
    no_decay = _no_weight_decay_names(model)
    groups: Dict[Tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if name not in lr_multipliers:
            continue
        mult = float(lr_multipliers[name])
        wd = 0.0 if name in no_decay else float(weight_decay)
        g = groups.setdefault((mult, wd), {"params": [], "param_names": [], "lr_multiplier": mult,
                                           "lr": base_lr * mult, "weight_decay": wd})
        g["params"].append(p)
        g["param_names"].append(name)
    return [groups[k] for k in sorted(groups, reverse=True)]


def cosine_lr_multiplier(step: int, max_iter: int, end: float = 0.05) -> float:
    """1 at step 0, `end` at `max_iter`, cosine in between (and `end` after)."""
    t = min(max(step, 0), max_iter) / max(max_iter, 1)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_poly_lr_multiplier(step: int, max_iter: int, power: float = 0.9, warmup_iters: int = 0,
                              warmup_factor: float = 1.0) -> float:
    """MAFT+'s schedule (detectron2 `projects/deeplab` `WarmupPolyLR`, linear warm-up, constant ending 0):
    `warmup(step) * (1 - step / max_iter) ** power`, the warm-up going linearly from `warmup_factor` to 1 over
    `warmup_iters` steps. MAFT+ runs it with warm-up off (factor 1, 0 iterations). Held at 0 after `max_iter`."""
    step = min(max(step, 0), max_iter)
    warm = 1.0
    if step < warmup_iters:
        alpha = step / warmup_iters
        warm = warmup_factor * (1.0 - alpha) + alpha
    return warm * math.pow(1.0 - step / max(max_iter, 1), power)


SCHEDULERS = ("cosine", "warmup_poly")


def build_optimizer(model: nn.Module, lr_multipliers: Dict[str, float], *, base_lr: float, weight_decay: float,
                    max_iter: int, lr_end_multiplier: float = 0.05, scheduler: str = "cosine",
                    poly_power: float = 0.9, warmup_iters: int = 0, warmup_factor: float = 1.0):
    """-> (AdamW, LambdaLR) with the cosine (MaskCLIP++) or warm-up poly (MAFT+) multiplier on every group."""
    groups = build_param_groups(model, lr_multipliers, base_lr=base_lr, weight_decay=weight_decay)
    if not groups:
        raise ValueError("nothing to train: no parameter matched the recipe")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    optimizer = torch.optim.AdamW(groups, lr=base_lr, weight_decay=weight_decay)
    if scheduler == "warmup_poly":
        def multiplier(step):
            return warmup_poly_lr_multiplier(step, max_iter, poly_power, warmup_iters, warmup_factor)
    else:
        def multiplier(step):
            return cosine_lr_multiplier(step, max_iter, lr_end_multiplier)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
