"""The two pre-processing branches and the mask resampling chain (corrections.md 6, 15)."""
import numpy as np
import torch
import torch.nn.functional as F

from ovs_ros.preprocess import (
    ResizeSpec,
    clip_source,
    generator_mask_probs,
    image_to_tensor,
    masks_to_clip_frame,
    prepare_branch,
)


def test_resize_spec_short_side_cap_and_padding():
    spec = ResizeSpec(short_side=640, max_long_side=1066, size_divisibility=32)
    assert spec.resized_hw(480, 640) == (640, 853)
    assert spec.padded_hw((640, 853)) == (640, 864)
    assert spec.resized_hw(400, 2000) == (213, 1066)  # long side capped
    fixed = ResizeSpec(short_side=0, max_long_side=0, size_divisibility=32, fixed_hw=(384, 640))
    assert fixed.resized_hw(480, 640) == (384, 512) and fixed.padded_hw((384, 512)) == (384, 640)


def test_branch_normalises_and_zero_pads_after_normalisation():
    rgb = np.full((30, 50, 3), 255, np.uint8)
    branch = prepare_branch(image_to_tensor(rgb, torch.device("cpu")),
                            ResizeSpec(30, 100, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert branch.pixel_values.shape == (1, 3, 32, 64) and branch.valid_hw == (30, 50)
    assert torch.allclose(branch.pixel_values[..., :30, :50], torch.full((1, 3, 30, 50), 2.0))
    assert branch.pixel_values[..., 30:, :].abs().max() == 0 and branch.pixel_values[..., 50:].abs().max() == 0


def test_mask_chain_order_matches_reference():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 8, 16)
    gen = prepare_branch(torch.rand(1, 3, 30, 60), ResizeSpec(30, 100, 32), (0, 0, 0), (1, 1, 1))
    probs = generator_mask_probs(logits, gen)
    reference = F.interpolate(logits.sigmoid(), size=(32, 64), mode="bilinear", align_corners=False)[..., :30, :60]
    torch.testing.assert_close(probs, reference)
    clip = prepare_branch(torch.rand(1, 3, 30, 60), ResizeSpec(20, 100, 16), (0, 0, 0), (1, 1, 1))
    in_clip = masks_to_clip_frame(probs, clip)
    assert in_clip.shape[-2:] == clip.pixel_values.shape[-2:]
    h, w = clip.valid_hw
    assert in_clip[..., h:, :].abs().max() == 0 and in_clip[..., :, w:].abs().max() == 0


def test_no_long_side_cap_and_clip_branch_is_not_antialiased():
    """MaskCLIP++'s CLIP branch: short side only (no cap) and a plain bilinear `F.interpolate` (corrections.md 15)."""
    uncapped = ResizeSpec(short_side=384, max_long_side=None, size_divisibility=16, antialias=False, floor_sizes=True)
    assert uncapped.resized_hw(720, 1280) == (384, 682)  # MaskCLIP++: int(1280 * 384 / 720) = int(682.67)
    assert uncapped.resized_hw(1280, 720) == (682, 384)
    # detectron2 ResizeShortestEdge rounds half up (int(x + 0.5)), not to even as Python's round() would
    assert ResizeSpec(short_side=3, max_long_side=None, size_divisibility=1).resized_hw(2, 3) == (3, 5)
    torch.manual_seed(0)
    image = torch.rand(1, 3, 120, 160)
    branch = prepare_branch(image, ResizeSpec(30, None, 2, antialias=False), (0, 0, 0), (1, 1, 1))
    plain = F.interpolate(image, size=(30, 40), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(branch.pixel_values, plain)
    smoothed = prepare_branch(image, ResizeSpec(30, None, 2), (0, 0, 0), (1, 1, 1))
    assert (smoothed.pixel_values - plain).abs().max() > 0.05  # the generator branch antialiases


def test_clip_resizes_from_the_generator_image_when_it_is_large_enough():
    image = torch.rand(1, 3, 480, 640)
    gen = prepare_branch(image, ResizeSpec(240, 1066, 32), (0, 0, 0), (1, 1, 1))
    assert gen.resized_01.shape[-2:] == (240, 320)
    assert clip_source(image, gen, ResizeSpec(224, None, 16, antialias=False)) is gen.resized_01
    # A generator input smaller than CLIP's would blur it: then CLIP resizes the camera frame itself.
    assert clip_source(image, gen, ResizeSpec(384, None, 16, antialias=False)) is image
