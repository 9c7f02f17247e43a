"""Image and mask pre-processing for the two model branches (corrections.md items 6 and 15).

The generator and the CLIP classifier each see the image at their own size and normalisation; masks travel from the
generator frame to the CLIP frame through one fixed resampling chain. Everything here is tensor code on the models'
device, so a camera frame is uploaded once and never comes back to the CPU until the panoptic map is done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ResizeSpec:
    """How one branch sizes its input.

    short_side: the image's short side is resized to this many pixels (aspect ratio kept) ...
    max_long_side: ... unless that makes the long side longer than this, then the long side is capped (None: no cap,
        as MaskCLIP++'s CLIP branch).
    size_divisibility: the resized image is zero-padded bottom/right to a multiple of this (the stride or patch size).
    fixed_hw: if set, pad to exactly this (H, W) instead, so engines see one fixed shape (the image is resized to fit).
    antialias: antialias when shrinking. On for the generator (detectron2 resizes with PIL); off for CLIP, which in
        the reference is a plain `F.interpolate` of the generator-sized image (see `clip_source`).
    floor_sizes: round sizes down, as MaskCLIP++'s CLIP branch (`int(w * size / h)`); otherwise round half up, as
        detectron2's `ResizeShortestEdge` (`int(x + 0.5)`).
    """

    short_side: int
    max_long_side: Optional[int]
    size_divisibility: int
    fixed_hw: Optional[Tuple[int, int]] = None
    antialias: bool = True
    floor_sizes: bool = False

    def resized_hw(self, height: int, width: int) -> Tuple[int, int]:
        if self.fixed_hw is not None:
            scale = min(self.fixed_hw[0] / height, self.fixed_hw[1] / width)
        else:
            scale = self.short_side / min(height, width)
            if self.max_long_side is not None and max(height, width) * scale > self.max_long_side:
                scale = self.max_long_side / max(height, width)
        offset = 0.0 if self.floor_sizes else 0.5
        return max(1, int(height * scale + offset)), max(1, int(width * scale + offset))

    def padded_hw(self, resized_hw: Tuple[int, int]) -> Tuple[int, int]:
        if self.fixed_hw is not None:
            return self.fixed_hw
        d = self.size_divisibility
        return tuple(-(-s // d) * d for s in resized_hw)  # type: ignore[return-value]


@dataclass
class BranchInput:
    """One branch's network input and where the real image sits inside it."""

    pixel_values: torch.Tensor  # [1, 3, Hp, Wp] normalised, zero-padded (zero *after* normalisation)
    valid_hw: Tuple[int, int]  # (h, w) of the resized image inside the padded tensor (top-left corner)
    resized_01: Optional[torch.Tensor] = None  # [1, 3, h, w] the resized image in 0..1, before normalisation


def image_to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 RGB -> [1, 3, H, W] float32 in 0..1 on `device` (one upload)."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).to(device=device, non_blocking=True)
    return tensor.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def prepare_branch(
    image_01: torch.Tensor,
    spec: ResizeSpec,
    pixel_mean_01: Union[Sequence[float], torch.Tensor],
    pixel_std_01: Union[Sequence[float], torch.Tensor],
    dtype: torch.dtype = torch.float32,
) -> BranchInput:
    """Resize (bilinear; antialiased when shrinking if the spec says so), normalise, zero-pad to the branch's shape."""
    _, _, height, width = image_01.shape
    resized_hw = spec.resized_hw(height, width)
    if resized_hw != (height, width):
        shrinking = resized_hw[0] < height
        image_01 = F.interpolate(image_01, size=resized_hw, mode="bilinear", align_corners=False,
                                 antialias=shrinking and spec.antialias)
    # device tensors (the Segmenter keeps them) pass through: a per-frame tensor from Python floats is a blocking upload
    mean = torch.as_tensor(pixel_mean_01, device=image_01.device, dtype=image_01.dtype).view(1, 3, 1, 1)
    std = torch.as_tensor(pixel_std_01, device=image_01.device, dtype=image_01.dtype).view(1, 3, 1, 1)
    normalised = (image_01 - mean) / std
    padded_hw = spec.padded_hw(resized_hw)
    pad_bottom, pad_right = padded_hw[0] - resized_hw[0], padded_hw[1] - resized_hw[1]
    if pad_bottom or pad_right:
        normalised = F.pad(normalised, (0, pad_right, 0, pad_bottom), value=0.0)
    return BranchInput(pixel_values=normalised.to(dtype), valid_hw=resized_hw, resized_01=image_01)


def clip_source(image_01: torch.Tensor, generator_input: BranchInput, clip_spec: ResizeSpec) -> torch.Tensor:
    """The image the CLIP branch resizes from: the generator-sized image, as in MaskCLIP++ (its CLIP input is a
    non-antialiased `F.interpolate` of the detectron2-resized, i.e. antialiased, image), when that is at least as
    large as the CLIP input; else the camera frame itself, so a small generator input never blurs CLIP's view."""
    resized = generator_input.resized_01
    if resized is None:
        return image_01
    _, _, height, width = image_01.shape
    clip_hw = clip_spec.resized_hw(height, width)
    if resized.shape[-2] >= clip_hw[0] and resized.shape[-1] >= clip_hw[1]:
        return resized
    return image_01


def generator_mask_probs(mask_logits: torch.Tensor, generator_input: BranchInput) -> torch.Tensor:
    """Stride-4 mask logits [B, Q, h4, w4] -> mask probabilities [B, Q, h, w] on the unpadded generator frame.

    Order as in the reference (corrections.md item 6): sigmoid first, then bilinear to the padded input, then unpad.
    """
    padded_hw = generator_input.pixel_values.shape[-2:]
    probs = torch.sigmoid(mask_logits.float())
    probs = F.interpolate(probs, size=padded_hw, mode="bilinear", align_corners=False)
    h, w = generator_input.valid_hw
    return probs[:, :, :h, :w]


def masks_to_clip_frame(mask_probs: torch.Tensor, clip_input: BranchInput) -> torch.Tensor:
    """Generator-frame mask probabilities -> the CLIP input frame: bilinear to the CLIP valid size, zero-pad."""
    h, w = clip_input.valid_hw
    resized = F.interpolate(mask_probs, size=(h, w), mode="bilinear", align_corners=False)
    padded_h, padded_w = clip_input.pixel_values.shape[-2:]
    return F.pad(resized, (0, padded_w - w, 0, padded_h - h), value=0.0)
