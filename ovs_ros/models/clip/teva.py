"""FISA's SEVE / FOV-Seg's TeVA for ViT CLIPs: mask tokens that read the vocabulary before they read the image.

In every mask-token block (the last `mask_prior_blocks`; FOV-Seg: all of them) the mask tokens' attention becomes
(seed 002 eqs. 7-11, seed 001 eqs. 1-5):

    M^  = M + g_o( softmax(g_q(M) g_k(T)^T / sqrt(r)) g_v(T) )       mask -> target text (our low-rank residual form)
    out = softmax(f_q(M^) f_k(I)^T + B) f_v(I)                        mask -> image, CLIP's own f_q, f_k, f_v

with M the block's normalised mask tokens, T the target text embeddings `[B, K, D]` (the vocabulary at runtime),
I the normalised patch tokens and B the binary any-overlap rule. The image stream is CLIP's, untouched.

Choices the papers leave open (training/README.md "FISA / FOV-Seg options"):
* g_k, g_v are shared by all blocks (the text is the same in every block); g_q and g_o are per block; all of rank r.
  g_o starts at zero, so an untrained TeVA passes the mask tokens through unchanged (M^ = M). About 0.8M
  parameters for ViT-L/14 at r = 16 (the 25M the papers tune are mostly f_q, seed-spec 5.1). One head, sqrt(r)
  scaling. Padded targets (`text_padding_mask` True) are never attended; a mask with no valid target gets 0.
* Distribution Adapter: conv3x3(1 -> hidden) -> GELU -> conv3x3(hidden -> 1), stride 1, as a residual on the
  proposals (second conv zero-initialised, so an untrained adapter is the identity). It runs on a grid of
  `adapter_grid_factor` cells per patch side (the proposals resampled bilinearly there: at the patch size it is the
  CLIP input resolution itself; the default 4 is about Mask2Former's stride-4 masks, and keeps the conv affordable).
* Mask rule: patch j is open to mask i when any cell of patch j has an adapted value > 0.5 (a covered pixel of a
  sigmoid mask); the bias is 0 there and -100 elsewhere (-100, not -inf, as MaskCLIP++: a mask that covers no patch
  attends uniformly to all patches instead of producing NaN; padded empty masks are dropped downstream).
  The rule is binary, so its value carries no gradient; the adapter trains through a straight-through term that is
  0 in the forward pass and has the gradient of the patch-mean adapted value as if it were an additive bias.
* Untrained TeVA therefore equals MaskCLIP++'s mask tokens with the binary rule (FISA's "frozen CLIP with mask
  attention" baseline), not MaskCLIP++'s max/2 soft bias: the rule is what the papers change.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TevaConfig
from .mask_tokens import OUTSIDE_MASK_BIAS, neck_block, vit_blocks, vit_embed, vit_plain_block

COVER_THRESHOLD = 0.5  # a pixel belongs to a sigmoid mask above this


def any_overlap_patch_bias(cell_masks: Tensor, factor: int) -> Tensor:
    """The binary mask rule on `[B, Q, h*factor, w*factor]` adapted masks -> `[B, Q, h*w]` additive bias.

    0 where any cell of the patch is > 0.5, else -100; plus a straight-through term that is 0 in value and carries
    the gradient of the patch-mean adapted value (so the adapter trains).
    """
    covered = (cell_masks > COVER_THRESHOLD).to(cell_masks.dtype)
    inside = F.max_pool2d(covered, factor) > 0  # B, Q, h, w
    mean = F.avg_pool2d(cell_masks, factor)
    straight_through = mean - mean.detach()
    bias = torch.where(inside, straight_through, torch.full_like(mean, OUTSIDE_MASK_BIAS))
    return bias.flatten(2)


class DistributionAdapter(nn.Module):
    """Two 3x3 stride-1 convs on each proposal (1 -> hidden -> 1 channel), residual, identity at init."""

    def __init__(self, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, hidden, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, 1, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, masks: Tensor) -> Tensor:
        b, q, h, w = masks.shape
        x = masks.reshape(b * q, 1, h, w)
        return (x + self.conv2(self.act(self.conv1(x)))).view(b, q, h, w)


class Teva(nn.Module):
    """TeVA's own parameters: shared g_k / g_v, per-block g_q / g_o, the Distribution Adapter."""

    def __init__(self, config: TevaConfig, visual_width: int, text_dim: int, num_blocks: int):
        super().__init__()
        self.config = config
        r = config.rank
        self.g_k = nn.Linear(text_dim, r)
        self.g_v = nn.Linear(text_dim, r)
        self.g_q = nn.ModuleList(nn.Linear(visual_width, r) for _ in range(num_blocks))
        self.g_o = nn.ModuleList(nn.Linear(r, visual_width) for _ in range(num_blocks))
        for out in self.g_o:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        self.adapter = DistributionAdapter(config.adapter_hidden)

    def patch_bias(self, mask_probs: Tensor, grid: Tuple[int, int]) -> Tensor:
        """`[B, Q, H, W]` proposals in the CLIP frame -> `[B, Q, h*w]` bias (adapter, then the any-overlap rule)."""
        f = self.config.adapter_grid_factor
        cells = F.interpolate(mask_probs, size=(grid[0] * f, grid[1] * f), mode="bilinear", align_corners=False)
        return any_overlap_patch_bias(self.adapter(cells), f)

    def targets(self, text: Tensor) -> Tuple[Tensor, Tensor]:
        """`[B, K, D]` target text embeddings -> keys and values `[B, K, r]` (shared by every block)."""
        return self.g_k(text), self.g_v(text)

    def mask_target(self, block: int, mask_tokens: Tensor, keys: Tensor, values: Tensor,
                    padding: Optional[Tensor]) -> Tensor:
        """`M + g_o(softmax(g_q(M) K^T / sqrt(r)) V)` for `[B, Q, C]` normalised mask tokens of block `block`."""
        q = self.g_q[block](mask_tokens)
        scores = q @ keys.transpose(1, 2) / math.sqrt(q.shape[-1])  # B, Q, K
        if padding is not None:
            scores = scores.masked_fill(padding.unsqueeze(1), torch.finfo(scores.dtype).min)
        read = scores.softmax(dim=-1) @ values
        if padding is not None:  # a mask with no valid target reads nothing (not the mean of the padding)
            read = read * (~padding).any(dim=-1).view(-1, 1, 1).to(read.dtype)
        return mask_tokens + self.g_o[block](read)


def run_vit_with_teva(family: str, visual: nn.Module, pixel_values: Tensor, mask_probs: Tensor, teva: Teva,
                      text: Tensor, text_padding_mask: Optional[Tensor],
                      mask_prior_blocks: int) -> Tuple[Tensor, Tensor]:
    """`run_vit_with_mask_tokens` with TeVA in every mask-token block.

    Args:
        text: `[B, K, D]` target text embeddings (L2-normalised CLIP text embeddings).
        text_padding_mask: `[B, K]` True = padding, or None.

    Returns:
        final image tokens `[B, 1 + HW, C]` (before the output norm) and mask tokens `[B, Q, C]`.
    """
    x, rope_table, grid = vit_embed(family, visual, pixel_values)
    blocks = vit_blocks(family, visual)
    first_neck = len(blocks) - mask_prior_blocks
    heads = _num_heads(family, blocks[0])
    bias = teva.patch_bias(mask_probs.to(x.dtype), grid)  # B, Q, HW
    bias = bias.unsqueeze(1).expand(-1, heads, -1, -1)
    keys, values = teva.targets(text.to(x.dtype))
    for i in range(first_neck):
        x = vit_plain_block(family, blocks[i], x, rope_table)
    mask_tokens = x[:, :1].expand(-1, mask_probs.shape[1], -1)
    for i in range(first_neck, len(blocks)):
        j = i - first_neck

        def read_text(m: Tensor, j: int = j) -> Tensor:
            return teva.mask_target(j, m, keys, values, text_padding_mask)

        x, mask_tokens = neck_block(family, blocks[i], x, mask_tokens, bias, rope_table, mask_query_fn=read_text)
    return x, mask_tokens


def _num_heads(family: str, block: nn.Module) -> int:
    return int(block.attn.num_heads)


def visual_width(family: str, visual: nn.Module) -> int:
    """Token width C of a ViT tower."""
    if family == "eva":
        return int(visual.trunk.embed_dim)
    return int(visual.transformer.width)
