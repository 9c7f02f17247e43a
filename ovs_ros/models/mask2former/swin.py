"""Swin Transformer backbone as used by Mask2Former (detectron2 `mask2former/modeling/backbone/swin.py`).

Parameter names follow detectron2 (`patch_embed`, `layers.{i}.blocks.{j}.attn.qkv`, `norm{i}`), so detectron2
checkpoints load by a prefix swap. Written for export: feature maps stay channels-last inside a stage, windows are
formed with views, the shifted-window mask is built from `arange` comparisons (no in-place slice writes), padding is
always applied (a zero pad is a no-op) instead of branching on it, and attention is explicit matmul + softmax.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Mask2FormerConfig

# Additive bias between tokens of different cyclic-shift regions (Swin's own value; finite so no row is all -inf).
SHIFTED_WINDOW_BIAS = -100.0


@dataclass
class BackboneOutput:
    """Swin stage outputs after their per-stage LayerNorm.

    feature_maps: `[B, C_i, H_i, W_i]` for strides 4, 8, 16, 32 (`res2`..`res5`), `C_i = embed_dim * 2**i`.
    """

    feature_maps: tuple[Tensor, ...]


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """`[B, H, W, C]` (H, W multiples of window_size) -> `[B * nW, window_size**2, C]`, windows in raster order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of `window_partition`: `[B * nW, window_size**2, C]` -> `[B, H, W, C]`."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def shifted_window_bias(height: int, width: int, window_size: int, shift_size: int, device: torch.device,
                        dtype: torch.dtype) -> Tensor:
    """Additive bias `[nW, N, N]` that keeps shifted-window attention inside each cyclic-shift region.

    The padded map is split along each axis into `[0, L - ws)`, `[L - ws, L - shift)`, `[L - shift, L)` (the same
    regions as detectron2's slice loop); tokens of different regions get `SHIFTED_WINDOW_BIAS`.
    """
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    row_region = (rows >= height - window_size).long() + (rows >= height - shift_size).long()
    col_region = (cols >= width - window_size).long() + (cols >= width - shift_size).long()
    region = (row_region[:, None] * 3 + col_region[None, :]).to(dtype)  # [H, W]
    region_windows = window_partition(region[None, :, :, None], window_size)[..., 0]  # [nW, N]
    different = (region_windows[:, None, :] != region_windows[:, :, None]).to(dtype)
    return different * SHIFTED_WINDOW_BIAS


def relative_position_index(window_size: int) -> Tensor:
    """`[N, N]` index into the `(2 ws - 1)**2` relative-position table for every pair of tokens of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # [2, N]
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # [N, N, 2]
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int, *, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Derived from window_size alone: not saved (detectron2 checkpoints carry it; the converter drops it).
        self.register_buffer("relative_position_index", relative_position_index(window_size).flatten(),
                             persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> Tensor:
        """`[heads, N, N]` bias looked up from the table."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index]  # [N*N, heads]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: Tensor, batch_size: int, window_bias: Tensor | None) -> Tensor:
        """windows: `[B * nW, N, C]`; window_bias: `[nW, N, N]` additive shift mask or None.

        Returns `[B * nW, N, C]`.
        """
        bw, n, c = windows.shape
        qkv = self.qkv(windows).view(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B*nW, heads, N, d]
        logits = torch.matmul(q * self.scale, k.transpose(-2, -1))  # [B*nW, heads, N, N]
        bias = self.relative_position_bias()[None]  # [1, heads, N, N]
        if window_bias is not None:  # chosen at construction (shifted blocks), not from data
            bias = bias + window_bias[:, None]  # [nW, heads, N, N]
            logits = logits.view(batch_size, -1, self.num_heads, n, n) + bias[None]
            logits = logits.view(bw, self.num_heads, n, n)
        else:
            logits = logits + bias
        attn = logits.softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm with residuals. Works on channels-last `[B, H, W, C]`."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, *, mlp_ratio: float,
                 qkv_bias: bool, eps: float):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, shift_bias: Tensor) -> Tensor:
        """x: `[B, H, W, C]`; shift_bias: `[nW, N, N]` for the padded map (used by shifted blocks only)."""
        b, h, w, c = x.shape
        ws = self.window_size
        pad_bottom, pad_right = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(self.norm1(x), (0, 0, 0, pad_right, 0, pad_bottom))  # padded after the norm, as in detectron2
        hp, wp = h + pad_bottom, w + pad_right
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = self.attn(window_partition(y, ws), b, shift_bias if self.shift_size > 0 else None)
        y = window_reverse(windows, ws, hp, wp)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x + y[:, :h, :w, :]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> Linear(4C -> 2C): halves the resolution."""

    def __init__(self, dim: int, *, eps: float):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[1], x.shape[2]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, *, mlp_ratio: float,
                 qkv_bias: bool, eps: float, downsample: bool):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size, mlp_ratio=mlp_ratio,
                      qkv_bias=qkv_bias, eps=eps)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, eps=eps) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: `[B, H, W, C]` -> (stage output `[B, H, W, C]`, input of the next stage `[B, H/2, W/2, 2C]`)."""
        ws = self.window_size
        # Ceil to a multiple of ws without negative floor division: the TorchScript ONNX exporter folds `-(-h // ws)`
        # on traced sizes as truncation (16 -> 14 instead of 21 for ws 7), which breaks the exported shift mask.
        hp = (x.shape[1] + ws - 1) // ws * ws
        wp = (x.shape[2] + ws - 1) // ws * ws
        shift_bias = shifted_window_bias(hp, wp, ws, self.shift_size, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, shift_bias)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    """Non-overlapping `patch_size` convolution + LayerNorm; returns channels-last `[B, H/p, W/p, C]`."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, *, eps: float):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        p = self.patch_size
        h, w = pixel_values.shape[-2:]
        pixel_values = F.pad(pixel_values, (0, (p - w % p) % p, 0, (p - h % p) % p))
        return self.norm(self.proj(pixel_values).permute(0, 2, 3, 1))


class SwinBackbone(nn.Module):
    """Swin Transformer returning the four normalised stage outputs (`res2`..`res5`).

    Args:
        config: uses `embed_dim`, `depths`, `num_heads`, `window_size`, `mlp_ratio`, `patch_size`, `qkv_bias`,
            `layer_norm_eps`. No absolute position embedding and no drop-path (inference).
    """

    def __init__(self, config: Mask2FormerConfig):
        super().__init__()
        eps = config.layer_norm_eps
        self.patch_embed = PatchEmbed(config.patch_size, 3, config.embed_dim, eps=eps)
        self.num_channels = config.backbone_channels
        num_stages = len(config.depths)
        self.layers = nn.ModuleList(
            SwinStage(self.num_channels[i], config.depths[i], config.num_heads[i], config.window_size,
                      mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias, eps=eps, downsample=i < num_stages - 1)
            for i in range(num_stages)
        )
        for i, channels in enumerate(self.num_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels, eps=eps))

    def forward(self, pixel_values: Tensor) -> BackboneOutput:
        """pixel_values: normalised `[B, 3, H, W]`."""
        x = self.patch_embed(pixel_values)
        feature_maps = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            norm = getattr(self, f"norm{i}")
            feature_maps.append(norm(out).permute(0, 3, 1, 2).contiguous())
        return BackboneOutput(feature_maps=tuple(feature_maps))
