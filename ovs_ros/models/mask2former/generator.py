"""Mask2Former as a class-agnostic-plus-closed-vocabulary mask generator: normalised, padded image -> Q mask logits
at stride 4 and Q closed-vocabulary class logits (void last).

Preprocessing (done by the caller, described here so it travels with the model): RGB scaled to 0-1, normalised with
ImageNet `pixel_mean_01` / `pixel_std_01` (detectron2's 0-255 `PIXEL_MEAN [123.675, 116.28, 103.53]`,
`PIXEL_STD [58.395, 57.12, 57.375]` divided by 255), padded with zeros to a multiple of `size_divisibility`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .config import Mask2FormerConfig
from .pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderOutput
from .swin import BackboneOutput, SwinBackbone
from .transformer_decoder import MaskedAttentionDecoder


@dataclass
class GeneratorOutput:
    """mask_logits: `[B, Q, H/4, W/4]` at stride 4 of the padded input (sigmoid -> mask probability).
    class_logits: `[B, Q, K_train + 1]` over the generator's training classes, void ("no object") last.
    """

    mask_logits: Tensor
    class_logits: Tensor


class Mask2FormerGenerator(nn.Module):
    """Swin backbone -> MSDeformAttn pixel decoder -> masked-attention transformer decoder.

    Args:
        config: architecture and training vocabulary (`class_names`, `num_classes`).

    Submodules `backbone`, `pixel_decoder`, `transformer_decoder` are the stages (each returns a dataclass), so
    intermediate results can be checked or reused.
    """

    pixel_mean_01 = (0.485, 0.456, 0.406)  # ImageNet RGB mean, 0-1 scale
    pixel_std_01 = (0.229, 0.224, 0.225)  # ImageNet RGB std, 0-1 scale

    def __init__(self, config: Mask2FormerConfig):
        super().__init__()
        self.config = config
        self.backbone = SwinBackbone(config)
        self.pixel_decoder = MSDeformAttnPixelDecoder(config)
        self.transformer_decoder = MaskedAttentionDecoder(config)

    @property
    def class_names(self) -> list[str]:
        """Training vocabulary, index-aligned with `class_logits[..., :-1]`."""
        return list(self.config.class_names)

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this (32 for a 4-stage, patch-4 Swin)."""
        return self.config.size_divisibility

    def forward_features(self, pixel_values: Tensor) -> tuple[BackboneOutput, PixelDecoderOutput]:
        features = self.backbone(pixel_values)
        return features, self.pixel_decoder(features.feature_maps)

    def forward(self, pixel_values: Tensor) -> GeneratorOutput:
        """pixel_values: normalised `[B, 3, H, W]`, H and W multiples of `size_divisibility`."""
        _, pixels = self.forward_features(pixel_values)
        out = self.transformer_decoder(pixels.multi_scale_features, pixels.mask_features)
        return GeneratorOutput(mask_logits=out.mask_logits, class_logits=out.class_logits)
