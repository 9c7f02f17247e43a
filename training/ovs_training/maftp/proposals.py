"""Mask proposals for the mask-aware loss. MAFT+ scores the queries of the generator it trains jointly; this package
trains the classifier alone, so the proposals come from a frozen runtime generator run on each augmented training
image (geometry matches whatever the augmentation did), or, for tests and smoke runs, from perturbed GT masks.

Every source maps a batch (`image` uint8 `[B, 3, H, W]`, `masks` `[B, G, H, W]`) to proposal probabilities
`[B, P, H, W]` in [0, 1] on the image frame, without gradient."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ProposalConfig


class SyntheticProposals:
    """Each GT mask blurred and shifted by a random offset, plus random blobs up to `num_proposals` per image, so
    IoUs with the GT spread from near 1 to 0 (what the min-max target needs). Drawn from its own `rng`, which the
    trainer checkpoints with its other generators (exact resume)."""

    def __init__(self, num_proposals: int, seed: int = 0):
        self.num_proposals = int(num_proposals)
        self.rng = torch.Generator().manual_seed(seed)

    def __call__(self, images: Tensor, gt_masks: Tensor) -> Tensor:
        b, g, h, w = gt_masks.shape
        p = self.num_proposals
        blobs = F.interpolate(torch.rand(b, p, 4, 4, generator=self.rng), size=(h, w), mode="bilinear",
                              align_corners=False)
        out = (blobs > 0.6).float()
        shifted = gt_masks[:, :p].float().cpu()
        for i in range(shifted.shape[1]):
            dy, dx = (int(v) for v in torch.randint(-h // 4, h // 4 + 1, (2,), generator=self.rng))
            shifted[:, i] = torch.roll(shifted[:, i], shifts=(dy, dx), dims=(-2, -1))
        out[:, :shifted.shape[1]] = shifted
        return F.avg_pool2d(out, 3, stride=1, padding=1, count_include_pad=False).to(gt_masks.device)


class GeneratorProposals:
    """A frozen runtime mask generator (`ovs_ros.model_factory.build_generator`): ImageNet-normalised image, zero
    padded to its stride, mask logits -> sigmoid -> bilinear to the padded frame -> unpadded (the runtime's
    `generator_mask_probs` order, corrections.md 6)."""

    def __init__(self, generator: nn.Module):
        self.generator = generator.eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_segmenter_config(cls, name: str, overrides: Optional[dict] = None) -> "GeneratorProposals":
        from pathlib import Path

        from ovs_ros.model_factory import build_generator
        from ovs_ros.segmenter_config import load_segmenter_config

        config = load_segmenter_config(name, dict(overrides or {}))
        weights_dir = Path(config.weights_dir).expanduser() if config.weights_dir else None
        generator, _ = build_generator(config.generator, weights_dir)
        return cls(generator)

    def to(self, device) -> "GeneratorProposals":
        self.generator.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor, gt_masks: Tensor) -> Tensor:
        gen = self.generator
        device = next(gen.parameters()).device
        mean = torch.tensor(gen.pixel_mean_01, device=device).view(1, 3, 1, 1)
        std = torch.tensor(gen.pixel_std_01, device=device).view(1, 3, 1, 1)
        x = (images.to(device).float() / 255.0 - mean) / std
        h, w = x.shape[-2:]
        d = int(gen.size_divisibility)
        x = F.pad(x, (0, (-w) % d, 0, (-h) % d))
        probs = torch.sigmoid(gen(x).mask_logits.float())
        probs = F.interpolate(probs, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return probs[:, :, :h, :w].to(gt_masks.device)


def build_proposals(config: ProposalConfig, seed: int = 0):
    """The proposal source of a `ProposalConfig` (None for kind "none")."""
    if config.kind == "none":
        return None
    if config.kind == "synthetic":
        return SyntheticProposals(config.num_proposals, seed=seed)
    return GeneratorProposals.from_segmenter_config(config.segmenter, config.overrides)
