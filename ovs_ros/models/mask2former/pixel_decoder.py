"""Multi-scale deformable-attention pixel decoder (detectron2 Mask2Former `pixel_decoder/msdeformattn.py`).

Deformable attention is written with `torch.nn.functional.grid_sample` (bilinear, zero padding,
`align_corners=False`), the math of Deformable DETR's `ms_deform_attn_core_pytorch`, so no custom CUDA op is needed
and ONNX (`GridSample`, opset >= 16) / TensorRT >= 8.5 can take it. Parameter names follow detectron2
(`input_proj`, `transformer.level_embed`, `transformer.encoder.layers.{i}`, `adapter_1`, `layer_1`,
`mask_features`). No padding masks: every input is a full, fixed-size padded image, so all valid ratios are 1.

Precision: the reference runs this whole decoder in fp32 under fp16 training and inference (`@autocast(enabled=False)`
and `.float()` on its inputs, "deformable detr does not support half precision"). So `runs_in_fp32` asks the model
factory to keep its weights fp32 when the rest of the generator is cast to fp16 / bf16 (`keep_fp32_islands`), and
`forward` runs with autocast off in its own weights' dtype and returns its maps in the dtype it was given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Mask2FormerConfig


@dataclass
class PixelDecoderOutput:
    """mask_features: `[B, mask_dim, H/4, W/4]` per-pixel embeddings the query masks are dotted with.
    multi_scale_features: 3 maps `[B, pixel_decoder_dim, H/s, W/s]` for s = 32, 16, 8 (the decoder's round robin).
    """

    mask_features: Tensor
    multi_scale_features: tuple[Tensor, ...]


def sine_position_embedding(batch_size: int, height: int, width: int, num_pos_feats: int, *, device: torch.device,
                            dtype: torch.dtype, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine embedding for a mask-free map: `[B, 2 * num_pos_feats, H, W]` (y features first).

    Coordinates are `1..H` / `1..W` scaled to `(0, 2 pi]` as in detectron2's `PositionEmbeddingSine(normalize=True)`.
    Built in fp32 and cast to `dtype` at the end (the same numbers in fp32): an fp16 `arange` exports as an ONNX
    `Range` on float16, a type ONNX's Range does not have, so an fp16 graph would fail `onnx.checker`.
    """
    eps = 1e-6
    scale = 2 * math.pi
    y_embed = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x_embed = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y_embed = y_embed / (y_embed[-1:] + eps) * scale
    x_embed = x_embed / (x_embed[-1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, device=device, dtype=torch.int64).float()
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_y = y_embed[:, None] / dim_t  # [H, F]
    pos_x = x_embed[:, None] / dim_t  # [W, F]
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos_y = pos_y[:, None, :].expand(height, width, num_pos_feats)
    pos_x = pos_x[None, :, :].expand(height, width, num_pos_feats)
    pos = torch.cat((pos_y, pos_x), dim=2)
    return pos.permute(2, 0, 1)[None].expand(batch_size, -1, -1, -1).to(dtype)


class ConvNorm(nn.Conv2d):
    """Conv2d followed by GroupNorm and an optional ReLU; detectron2's `Conv2d(norm=..., activation=...)` naming
    (`weight`, `norm.weight`) so checkpoints map one to one."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, groups_norm: int, relu: bool):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(groups_norm, out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), 2-d reference points, `grid_sample` sampling."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.head_dim = dim // num_heads
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's init: offsets start on rays around the reference point, uniform attention.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: Tensor, reference_points: Tensor, value_input: Tensor,
                spatial_shapes: list[tuple[int, int]]) -> Tensor:
        """query: `[B, S, D]` (with position embedding); reference_points: `[1, S, 2]` normalised (x, y) in (0, 1);
        value_input: `[B, S, D]` flattened levels in `spatial_shapes` order. Returns `[B, S, D]`."""
        b, s, _ = query.shape
        h, lv, pt, d = self.num_heads, self.num_levels, self.num_points, self.head_dim
        value = self.value_proj(value_input)
        offsets = self.sampling_offsets(query).view(b, s, h, lv, pt, 2)
        weights = self.attention_weights(query).view(b, s, h, lv * pt).softmax(-1)  # [B, S, h, L*P]
        values = value.split([hl * wl for hl, wl in spatial_shapes], dim=1)
        sampled = []
        for level, (hl, wl) in enumerate(spatial_shapes):
            value_l = values[level].transpose(1, 2).reshape(b * h, d, hl, wl)
            size_xy = offsets.new_tensor([wl, hl])
            locations = reference_points[:, :, None, None, :] + offsets[:, :, :, level] / size_xy  # [B, S, h, P, 2]
            grid = (2 * locations - 1).transpose(1, 2).reshape(b * h, s, pt, 2)
            sampled.append(F.grid_sample(value_l, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        sampled_all = torch.cat(sampled, dim=-1)  # [B*h, d, S, L*P]
        weights = weights.transpose(1, 2).reshape(b * h, 1, s, lv * pt)
        out = (sampled_all * weights).sum(-1).view(b, h * d, s).transpose(1, 2)
        return self.output_proj(out)


class DeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + ReLU FFN."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: list[tuple[int, int]]) -> Tensor:
        x = self.norm1(x + self.self_attn(x + pos, reference_points, x, spatial_shapes))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class DeformableEncoder(nn.Module):
    def __init__(self, config: Mask2FormerConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(config.pixel_decoder_dim, config.encoder_ffn_dim, config.encoder_num_heads,
                                   config.num_feature_levels, config.n_points)
            for _ in range(config.encoder_layers)
        )


class DeformableTransformer(nn.Module):
    """Holds the level embedding and the encoder layers (detectron2's `MSDeformAttnTransformerEncoderOnly`)."""

    def __init__(self, config: Mask2FormerConfig):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, config.pixel_decoder_dim))
        nn.init.normal_(self.level_embed)
        self.encoder = DeformableEncoder(config)


def reference_points(spatial_shapes: list[tuple[int, int]], *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Pixel centres of every level, normalised to (0, 1), as (x, y): `[1, sum(H*W), 2]`."""
    points = []
    for height, width in spatial_shapes:
        ref_y = torch.linspace(0.5, height - 0.5, height, device=device, dtype=dtype) / height
        ref_x = torch.linspace(0.5, width - 0.5, width, device=device, dtype=dtype) / width
        grid_y, grid_x = torch.meshgrid(ref_y, ref_x, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
    # `.to(dtype)`: a no-op in eager mode; when the traced level sizes are tensors (a ConvNeXt backbone's conv
    # outputs, FC-CLIP), the ONNX exporter's linspace yields double, which onnxruntime's GridSample refuses.
    return torch.cat(points, 0)[None].to(dtype)


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone maps (strides 4..32) -> deformable encoder on the coarsest `num_feature_levels` maps -> FPN down to
    `common_stride` -> 1x1 conv to the mask features."""

    runs_in_fp32 = True  # see the module docstring: kept fp32 under half precision, as the reference

    def __init__(self, config: Mask2FormerConfig):
        super().__init__()
        dim, groups = config.pixel_decoder_dim, config.norm_groups
        channels = config.backbone_channels
        strides = [config.patch_size * 2**i for i in range(len(channels))]
        self.num_feature_levels = config.num_feature_levels
        # Encoder levels from coarse to fine (res5, res4, res3), as detectron2 orders `input_proj`.
        encoder_channels = channels[-self.num_feature_levels:][::-1]
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, kernel_size=1), nn.GroupNorm(groups, dim)) for c in encoder_channels
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = DeformableTransformer(config)
        self.num_pos_feats = dim // 2
        self.mask_features = nn.Conv2d(dim, config.mask_dim, kernel_size=1)
        # FPN levels finer than the encoder's finest stride, down to common_stride (one level, res2, by default).
        finest_encoder_stride = strides[-self.num_feature_levels]
        self.num_fpn_levels = int(math.log2(finest_encoder_stride) - math.log2(config.common_stride))
        for idx in range(self.num_fpn_levels):
            self.add_module(f"adapter_{idx + 1}", ConvNorm(channels[idx], dim, 1, groups_norm=groups, relu=False))
            self.add_module(f"layer_{idx + 1}", ConvNorm(dim, dim, 3, groups_norm=groups, relu=True))

    def forward(self, feature_maps: tuple[Tensor, ...]) -> PixelDecoderOutput:
        """feature_maps: backbone outputs, strides 4, 8, 16, 32 (fine to coarse). Runs in this module's own dtype
        (fp32 unless cast on purpose) with autocast off; the outputs come back in the dtype of `feature_maps`."""
        out_dtype = feature_maps[0].dtype
        own_dtype = self.mask_features.weight.dtype
        with torch.autocast(device_type=feature_maps[0].device.type, enabled=False):
            out = self._forward(tuple(x.to(own_dtype) for x in feature_maps))
        return PixelDecoderOutput(
            mask_features=out.mask_features.to(out_dtype),
            multi_scale_features=tuple(x.to(out_dtype) for x in out.multi_scale_features),
        )

    def _forward(self, feature_maps: tuple[Tensor, ...]) -> PixelDecoderOutput:
        encoder_inputs = feature_maps[::-1][: self.num_feature_levels]  # coarse to fine
        b = encoder_inputs[0].shape[0]
        srcs, pos_flat, spatial_shapes = [], [], []
        for level, x in enumerate(encoder_inputs):
            h, w = x.shape[-2:]
            spatial_shapes.append((h, w))
            srcs.append(self.input_proj[level](x).flatten(2).transpose(1, 2))
            pos = sine_position_embedding(b, h, w, self.num_pos_feats, device=x.device, dtype=x.dtype)
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.transformer.level_embed[level].view(1, 1, -1))
        x = torch.cat(srcs, 1)
        pos = torch.cat(pos_flat, 1)
        ref = reference_points(spatial_shapes, device=x.device, dtype=x.dtype)
        for layer in self.transformer.encoder.layers:
            x = layer(x, pos, ref, spatial_shapes)
        outs = [
            level.transpose(1, 2).reshape(b, -1, h, w)
            for level, (h, w) in zip(x.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes)
        ]
        # FPN from coarse to fine; detectron2 upsamples bilinearly despite its "nearest" comment.
        for idx in range(self.num_fpn_levels - 1, -1, -1):
            lateral = getattr(self, f"adapter_{idx + 1}")(feature_maps[idx])
            top_down = F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(getattr(self, f"layer_{idx + 1}")(lateral + top_down))
        return PixelDecoderOutput(
            mask_features=self.mask_features(outs[-1]),
            multi_scale_features=tuple(outs[: self.num_feature_levels]),
        )
