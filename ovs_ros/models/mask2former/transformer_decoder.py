"""Masked-attention transformer decoder (detectron2 Mask2Former
`transformer_decoder/mask2former_transformer_decoder.py`, `MultiScaleMaskedTransformerDecoder`).

Departures from the reference, all numerically neutral in fp32:
- masks are `matmul(mask_embed, mask_features)` instead of `einsum("bqc,bchw->bqhw")` (TensorRT einsum coverage);
- the attention mask is an additive float bias (`MASKED_ATTENTION_BIAS` where the predicted mask is below 0.5)
  instead of a boolean mask; a query whose mask is empty everywhere attends everywhere, as detectron2's
  `attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False`, but computed with float math
  (`blocked * (1 - all_blocked)`) instead of an in-place index write;
- attention is explicit matmul + softmax with detectron2's `nn.MultiheadAttention` parameter names
  (`in_proj_weight`, `in_proj_bias`, `out_proj`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Mask2FormerConfig
from .pixel_decoder import sine_position_embedding

# Bias on keys outside a query's predicted mask: -1e4, not -inf, so fp16 engines stay finite; exp(-1e4) is exactly 0
# in fp32 and fp16, so the softmax equals the boolean-masked one for any realistic logit range.
MASKED_ATTENTION_BIAS = -1.0e4


@dataclass
class TransformerDecoderOutput:
    """mask_logits: `[B, Q, H/4, W/4]` (stride of the mask features). class_logits: `[B, Q, K_train + 1]`, void last."""

    mask_logits: Tensor
    class_logits: Tensor


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with `nn.MultiheadAttention`'s parameters and an additive float bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, N, d]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None = None) -> Tensor:
        """query `[B, Nq, D]`, key/value `[B, Nk, D]`, bias `[B, Nq, Nk]` (shared by heads) or None."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3, dim=0)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3, dim=0)
        q = self._heads(F.linear(query, w_q, b_q)) * self.scale
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        logits = torch.matmul(q, k.transpose(-2, -1))  # [B, h, Nq, Nk]
        if bias is not None:
            logits = logits + bias[:, None]
        out = torch.matmul(logits.softmax(dim=-1), v).transpose(1, 2)
        return self.out_proj(out.reshape(query.shape[0], query.shape[1], -1))


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, pre_norm: bool):
        super().__init__()
        self.multihead_attn = MultiheadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm

    def forward(self, tgt: Tensor, memory: Tensor, bias: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        if self.pre_norm:
            q = self.norm(tgt)
            return tgt + self.multihead_attn(q + query_pos, memory + pos, memory, bias)
        return self.norm(tgt + self.multihead_attn(tgt + query_pos, memory + pos, memory, bias))


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, pre_norm: bool):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        if self.pre_norm:
            x = self.norm(tgt)
            return tgt + self.self_attn(x + query_pos, x + query_pos, x)
        return self.norm(tgt + self.self_attn(tgt + query_pos, tgt + query_pos, tgt))


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, *, pre_norm: bool):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm

    def forward(self, tgt: Tensor) -> Tensor:
        if self.pre_norm:
            return tgt + self.linear2(F.relu(self.linear1(self.norm(tgt))))
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (detectron2 `MLP`, keys `layers.{i}`)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def masked_attention_bias(mask_logits: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """Additive cross-attention bias `[B, Q, h*w]` from stride-4 mask logits `[B, Q, H, W]`.

    Keys where the resized mask probability is below 0.5 get `MASKED_ATTENTION_BIAS`; rows blocked everywhere are
    reopened (bias 0), as detectron2 does, with float math only.
    """
    resized = F.interpolate(mask_logits, size=size_hw, mode="bilinear", align_corners=False)
    blocked = (resized.sigmoid().flatten(2) < 0.5).to(mask_logits.dtype)  # 1 = outside the mask
    all_blocked = blocked.amin(dim=-1, keepdim=True)
    return (blocked * (1.0 - all_blocked) * MASKED_ATTENTION_BIAS).detach()


class MaskedAttentionDecoder(nn.Module):
    """Learned queries refined by `decoder_layers` rounds of masked cross-attention -> self-attention -> FFN,
    cycling over the pixel decoder's three scales (coarse to fine). Only the final prediction is returned (the
    auxiliary per-layer predictions are training-only); intermediate masks are computed only to build the biases."""

    def __init__(self, config: Mask2FormerConfig):
        super().__init__()
        dim, heads = config.hidden_dim, config.decoder_num_heads
        self.num_feature_levels = config.num_feature_levels
        self.num_layers = config.decoder_layers
        self.num_pos_feats = dim // 2
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(dim, heads, pre_norm=config.pre_norm) for _ in range(self.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(dim, heads, pre_norm=config.pre_norm) for _ in range(self.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(dim, config.dim_feedforward, pre_norm=config.pre_norm) for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        self.query_feat = nn.Embedding(config.num_queries, dim)
        self.query_embed = nn.Embedding(config.num_queries, dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, dim)
        in_channels = config.pixel_decoder_dim
        project = in_channels != dim or config.enforce_input_projection
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, dim, kernel_size=1) if project else nn.Sequential()
            for _ in range(self.num_feature_levels)
        )
        self.class_embed = nn.Linear(dim, config.num_classes + 1)
        self.mask_embed = MLP(dim, dim, config.mask_dim, 3)

    def predict_masks(self, output: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """output `[B, Q, D]` -> (normed queries `[B, Q, D]`, mask logits `[B, Q, H/4, W/4]`)."""
        decoded = self.decoder_norm(output)
        b, c, h, w = mask_features.shape
        masks = torch.matmul(self.mask_embed(decoded), mask_features.flatten(2))  # [B, Q, H*W]
        return decoded, masks.view(b, -1, h, w)

    def forward(self, multi_scale_features: tuple[Tensor, ...], mask_features: Tensor) -> TransformerDecoderOutput:
        b = mask_features.shape[0]
        srcs, pos, sizes = [], [], []
        for level in range(self.num_feature_levels):
            x = multi_scale_features[level]
            h, w = x.shape[-2:]
            sizes.append((h, w))
            pe = sine_position_embedding(b, h, w, self.num_pos_feats, device=x.device, dtype=x.dtype)
            pos.append(pe.flatten(2).transpose(1, 2))
            src = self.input_proj[level](x).flatten(2) + self.level_embed.weight[level][None, :, None]
            srcs.append(src.transpose(1, 2))  # [B, h*w, D]
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        output = self.query_feat.weight[None].expand(b, -1, -1)
        decoded, masks = self.predict_masks(output, mask_features)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            bias = masked_attention_bias(masks, sizes[level])
            output = self.transformer_cross_attention_layers[i](output, srcs[level], bias, pos[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            decoded, masks = self.predict_masks(output, mask_features)
        return TransformerDecoderOutput(mask_logits=masks, class_logits=self.class_embed(decoded))
