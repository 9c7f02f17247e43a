"""MaskCLIP++ mask tokens for ViT CLIPs (EVA02 through timm's `Eva`, OpenAI-style open_clip `VisionTransformer`).

Q mask tokens start as copies of the CLS token entering the last `mask_prior_blocks` blocks. In those blocks each
mask token attends only to the HW patch tokens, with an additive bias `exp(scale[block, head]) * soft mask` inside
its (binarised) mask and -100 outside; CLS and patches never attend to mask tokens (MaskCLIP++
`vencoder/eva_clip_vit.py` `_masks_to_attn_biases`). Because the image stream does not see the mask tokens and every
other op in a block is per token, the mask tokens are computed here as a cross-attention of Q queries over the HW
patch keys/values with a `[B, heads, Q, HW]` bias, instead of MaskCLIP++'s joined `[Q | CLS | HW]` sequence with a
`[heads, Q+1+HW, Q+1+HW]` bias (corrections.md 7): the same numbers, less memory, no -inf entries.

EVA02 rotates (RoPE) only the HW patch tokens of q and k; CLS and mask tokens are never rotated (corrections.md 2).
The RoPE table and the absolute position embedding are rebuilt for the current patch grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Outside-the-mask bias: MaskCLIP++ uses -100, not -inf, because an empty mask would give an all -inf row (NaN).
OUTSIDE_MASK_BIAS = -100.0


def resample_masks_to_grid(mask_probs: Tensor, grid_hw: Tuple[int, int]) -> Tensor:
    """Soft masks `[B, Q, H, W]` -> `[B, Q, h, w]`, bilinear, `align_corners=False`, no antialias (corrections.md 6)."""
    if mask_probs.dim() != 4:
        raise ValueError(f"mask_probs must be [B, Q, H, W], got shape {tuple(mask_probs.shape)}")
    return F.interpolate(mask_probs, size=grid_hw, mode="bilinear", align_corners=False, antialias=False)


def masks_to_patch_bias(grid_masks: Tensor, mask_logit_scale_row: Tensor) -> Tensor:
    """Attention bias of the mask tokens over the patches for one block.

    Args:
        grid_masks: `[B, Q, HW]` soft masks on the patch grid.
        mask_logit_scale_row: `[heads]` log scale of this block.

    Returns:
        `[B, heads, Q, HW]`: `exp(scale) * soft mask` where the mask is `> max/2` (strict, per mask), else -100.
    """
    threshold = grid_masks.amax(dim=-1, keepdim=True) / 2
    inside = (grid_masks > threshold).unsqueeze(1)  # B, 1, Q, HW
    scaled = grid_masks.unsqueeze(1) * mask_logit_scale_row.exp().view(1, -1, 1, 1)
    return torch.where(inside, scaled, torch.full_like(scaled, OUTSIDE_MASK_BIAS))


def resize_abs_pos_embed(pos_embed: Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int],
                         num_prefix_tokens: int = 1) -> Tensor:
    """Resize `[..., prefix + h*w, C]` position embeddings to a new grid.

    Bicubic with `align_corners=True`, no antialias, as MaskCLIP++ `_interpolate_postion_embedding` (timm's
    `resample_abs_pos_embed` would use align_corners=False with antialias). The identity at the pretrained grid.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    lead = pos_embed.shape[:-2]
    prefix, patches = pos_embed[..., :num_prefix_tokens, :], pos_embed[..., num_prefix_tokens:, :]
    channels = patches.shape[-1]
    grid = patches.reshape(-1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=True)
    patches = grid.permute(0, 2, 3, 1).reshape(*lead, new_grid[0] * new_grid[1], channels)
    return torch.cat([prefix, patches], dim=-2)


def eva_rope_table(rope: nn.Module, grid_hw: Tuple[int, int], device: Optional[torch.device] = None) -> Tensor:
    """EVA RoPE table `[h*w, 2 * rot_dim]` (sin | cos) for a patch grid, from the trunk's own frequency bands.

    Positions are `arange(h) / h * ref` with `ref` the pretrained grid (timm `ref_feat_shape`, corrections.md 2);
    at the trunk's own grid this equals timm's cached table.
    """
    from timm.layers import build_rotary_pos_embed

    sin_emb, cos_emb = build_rotary_pos_embed(
        list(grid_hw),
        bands=rope.bands,
        in_pixels=rope.in_pixels,
        ref_feat_shape=rope.ref_feat_shape,
        grid_offset=rope.grid_offset,
        grid_indexing=rope.grid_indexing,
        rotate_half=rope.rotate_half,
        grid_type=rope.grid_type,
        normalize_coords=rope.normalize_coords,
        device=device,  # built where it is used: a host-built table would be a blocking upload per frame
        dtype=torch.float32,
    )
    return torch.cat([sin_emb, cos_emb], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# Per-family block pieces. A neck block runs the image stream [CLS | HW] and the Q mask tokens together: per-token
# ops on the concatenation [CLS | HW | Q], attention split in two (image self-attention, mask cross-attention).


@dataclass
class _Qkv:
    q: Tensor  # B, heads, N, d
    k: Tensor
    v: Tensor


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _eva_qkv(attn: nn.Module, x: Tensor) -> _Qkv:
    heads = attn.num_heads
    if attn.qkv is not None:
        bias = None
        if attn.q_bias is not None:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        q, k, v = F.linear(x, attn.qkv.weight, bias).chunk(3, dim=-1)
    else:
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    q, k, v = _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
    return _Qkv(attn.q_norm(q), attn.k_norm(k), v)


def _eva_attn_out(attn: nn.Module, o: Tensor, x_normed: Tensor) -> Tensor:
    o = attn.norm(_merge_heads(o))
    if attn.gate is not None:
        o = o * attn.gate(x_normed).sigmoid()
    return attn.proj_drop(attn.proj(o))


def _vit_qkv(attn: nn.MultiheadAttention, x: Tensor) -> _Qkv:
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads = attn.num_heads
    return _Qkv(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads))


def _vit_attn_out(attn: nn.MultiheadAttention, o: Tensor, x_normed: Tensor) -> Tensor:
    return attn.out_proj(_merge_heads(o))


def _rotate(x: Tensor, rope_table: Tensor, half: bool) -> Tensor:
    from timm.layers import apply_rot_embed_cat

    return apply_rot_embed_cat(x, rope_table, half=half).type_as(x)


def _read_masks(y_normed: Tensor, num_image_tokens: int, mask_query_fn: Optional[Callable[[Tensor], Tensor]]) -> Tensor:
    if mask_query_fn is None:
        return y_normed
    return torch.cat([y_normed[:, :num_image_tokens], mask_query_fn(y_normed[:, num_image_tokens:])], dim=1)


def neck_block(family: str, block: nn.Module, x: Tensor, mask_tokens: Tensor, patch_bias: Tensor,
               rope_table: Optional[Tensor],
               mask_query_fn: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """One block with mask tokens.

    Args:
        family: "eva" (timm `EvaBlock`) or "vit" (open_clip `ResidualAttentionBlock`).
        x: `[B, 1 + HW, C]` image stream (CLS first).
        mask_tokens: `[B, Q, C]`.
        patch_bias: `[B, heads, Q, HW]` additive bias of the mask tokens over the patches.
        rope_table: EVA `[HW, 2 * rot_dim]` or None.
        mask_query_fn: TeVA (`teva.py`): maps the normalised mask tokens `[B, Q, C]` to what CLIP's projections
            read for them (their query); None = the MaskCLIP++ block, op for op.

    Returns:
        (x, mask_tokens) after the block; x equals `block(x)` (the image stream never sees the mask tokens).
    """
    num_image_tokens = x.shape[1]
    y = torch.cat([x, mask_tokens], dim=1)
    if family == "eva":
        attn = block.attn
        y_normed = _read_masks(block.norm1(y), num_image_tokens, mask_query_fn)
        qkv = _eva_qkv(attn, y_normed)
        q, k, v = qkv.q, qkv.k, qkv.v
        if rope_table is not None:
            half = bool(getattr(attn, "rotate_half", False))
            npt = 1  # CLS
            q = torch.cat([q[:, :, :npt], _rotate(q[:, :, npt:num_image_tokens], rope_table, half),
                           q[:, :, num_image_tokens:]], dim=2)
            k = torch.cat([k[:, :, :npt], _rotate(k[:, :, npt:num_image_tokens], rope_table, half)], dim=2)
        attn_out = _eva_attn_out
        ls_1 = (lambda t: t * block.gamma_1) if block.gamma_1 is not None else (lambda t: t)
        ls_2 = (lambda t: t * block.gamma_2) if block.gamma_2 is not None else (lambda t: t)
        norm2, mlp = block.norm2, block.mlp
        drop_path1, drop_path2 = block.drop_path1, block.drop_path2
    elif family == "vit":
        attn = block.attn
        y_normed = _read_masks(block.ln_1(y), num_image_tokens, mask_query_fn)
        qkv = _vit_qkv(attn, y_normed)
        q, k, v = qkv.q, qkv.k, qkv.v
        attn_out = _vit_attn_out
        ls_1, ls_2 = block.ls_1, block.ls_2
        norm2, mlp = block.ln_2, block.mlp
        drop_path1 = drop_path2 = nn.Identity()
    else:
        raise ValueError(f"unknown ViT family {family!r}")

    k_img, v_img = k[:, :, :num_image_tokens], v[:, :, :num_image_tokens]
    q_img, q_mask = q[:, :, :num_image_tokens], q[:, :, num_image_tokens:]
    o_img = F.scaled_dot_product_attention(q_img, k_img, v_img)
    # Mask tokens: queries over the HW patch keys/values only (never CLS, never other mask tokens).
    o_mask = F.scaled_dot_product_attention(q_mask, k_img[:, :, 1:], v_img[:, :, 1:],
                                            attn_mask=patch_bias.to(q_mask.dtype))
    o = attn_out(attn, torch.cat([o_img, o_mask], dim=2), y_normed)
    y = y + drop_path1(ls_1(o))
    y = y + drop_path2(ls_2(mlp(norm2(y))))
    return y[:, :num_image_tokens], y[:, num_image_tokens:]


# ----------------------------------------------------------------------------------------------------------------
# Whole trunks.


def vit_embed(family: str, visual: nn.Module, pixel_values: Tensor) -> Tuple[Tensor, Optional[Tensor],
                                                                               Tuple[int, int]]:
    """Patch + position embedding for the current grid.

    Returns:
        tokens `[B, 1 + HW, C]`, the EVA RoPE table `[HW, 2 * rot_dim]` (None for OpenAI ViT), grid `(h, w)`.
    """
    if family == "eva":
        trunk = visual.trunk
        x = trunk.patch_embed.proj(pixel_values)
        # Python ints: under ONNX tracing the pos-embed resize and RoPE table become constants for this grid (engines
        # are fixed-shape); traced sizes made the TorchScript exporter mis-infer ranks (aten::cat "All tensors must
        # have the same rank" in neck_block).
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = trunk.patch_embed.norm(x.flatten(2).transpose(1, 2))
        cls = trunk.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        pos = None
        if trunk.pos_embed is not None:
            old_grid = tuple(trunk.patch_embed.grid_size)
            prefix = 0 if trunk.no_embed_class else 1
            pos = resize_abs_pos_embed(trunk.pos_embed, old_grid, grid, num_prefix_tokens=prefix).to(x.dtype)
        if trunk.no_embed_class:
            x = torch.cat([cls, x + pos if pos is not None else x], dim=1)
        else:
            x = torch.cat([cls, x], dim=1)
            x = x + pos if pos is not None else x
        x = trunk.pos_drop(x)
        x = trunk.norm_pre(x)
        rope_table = eva_rope_table(trunk.rope, grid, x.device) if trunk.rope is not None else None
        return x, rope_table, grid
    if family == "vit":
        x = visual.conv1(pixel_values)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        pos = resize_abs_pos_embed(visual.positional_embedding, tuple(visual.grid_size), grid).to(x.dtype)
        x = x + pos
        x = visual.patch_dropout(x)
        x = visual.ln_pre(x)
        return x, None, grid
    raise ValueError(f"unknown ViT family {family!r}")


def vit_blocks(family: str, visual: nn.Module) -> nn.ModuleList:
    return visual.trunk.blocks if family == "eva" else visual.transformer.resblocks


def vit_plain_block(family: str, block: nn.Module, x: Tensor, rope_table: Optional[Tensor]) -> Tensor:
    if family == "eva":
        return block(x, rope=rope_table)
    return block(x)


def vit_output_head(family: str, visual: nn.Module) -> Callable[[Tensor], Tensor]:
    """Per-token output head: EVA `head(norm(x))` (corrections.md 3), OpenAI `ln_post(x) @ proj`."""
    if family == "eva":
        trunk = visual.trunk

        def eva_head(t: Tensor) -> Tensor:
            t = trunk.fc_norm(trunk.norm(t))
            return visual.head(trunk.head(trunk.head_drop(t)))

        return eva_head

    def vit_head(t: Tensor) -> Tensor:
        t = visual.ln_post(t)
        return t @ visual.proj if visual.proj is not None else t

    return vit_head


def run_vit_with_mask_tokens(family: str, visual: nn.Module, pixel_values: Tensor, mask_probs: Optional[Tensor],
                             mask_logit_scale: Optional[Tensor], mask_prior_blocks: int) -> Tuple[Tensor,
                                                                                                  Optional[Tensor]]:
    """Run a ViT trunk with optional mask tokens.

    Args:
        pixel_values: `[B, 3, H, W]`, H and W multiples of the patch size.
        mask_probs: `[B, Q, H', W']` soft masks in the CLIP input frame, or None (image path only).
        mask_logit_scale: `[mask_prior_blocks, heads]`, index 0 = last block (corrections.md 5).

    Returns:
        final image tokens `[B, 1 + HW, C]` (before the output norm) and mask tokens `[B, Q, C]` (or None).
    """
    x, rope_table, grid = vit_embed(family, visual, pixel_values)
    blocks = vit_blocks(family, visual)
    num_blocks = len(blocks)
    first_neck = num_blocks - mask_prior_blocks
    if mask_probs is None:
        for block in blocks:
            x = vit_plain_block(family, block, x, rope_table)
        return x, None

    grid_masks = resample_masks_to_grid(mask_probs.to(x.dtype), grid).flatten(2)  # B, Q, HW
    for i in range(first_neck):
        x = vit_plain_block(family, blocks[i], x, rope_table)
    mask_tokens = x[:, :1].expand(-1, grid_masks.shape[1], -1)
    for i in range(first_neck, num_blocks):
        scale_row = mask_logit_scale[num_blocks - 1 - i]
        bias = masks_to_patch_bias(grid_masks, scale_row)
        x, mask_tokens = neck_block(family, blocks[i], x, mask_tokens, bias, rope_table)
    return x, mask_tokens
