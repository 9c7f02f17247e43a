"""MaskCLIP++'s COCO-Stuff training mapper (`mask_former_semantic`), sample-wise, with the draws from one seeded RNG.

`MaskFormerSemanticDatasetMapper.from_config` builds, in order (the `_wtext` recipe's values in brackets):

1. `ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, "choice")` [short side one of
   `int(x * 0.1 * 448) for x in 3..19`, long side <= 4096]: detectron2 `get_output_shape` (scale the short side
   to the choice, then the long side to <= max, `int(v + 0.5)`); the image through PIL bilinear (uint8), the label
   map, which the mapper reads as float64, through `F.interpolate(mode="nearest")` (detectron2 `ResizeTransform`
   does not use PIL for non-uint8 arrays; the two nearest rules pick different pixels).
2. `RandomCrop_CategoryAreaConstraint("absolute", (448, 448), SINGLE_CATEGORY_MAX_AREA, ignore 255)`: a crop of
   `min(crop, size)` per axis; with max area 1.0 (the recipe) a plain random crop, otherwise up to 10 draws until no
   single category covers more than that share of the non-ignored pixels.
3. `ColorAugSSDTransform` (PointRend): brightness, then contrast / saturation / hue in one of two orders, each with
   probability 1/2, in BGR and OpenCV HSV as the reference computes them.
4. `RandomFlip()`: horizontal with probability 0.5.

No padding: images may come out smaller than the crop (a short side below 448); `collate_masks` pads the batch and
the model pads to its stride with zeros after normalisation, as MaskCLIP++'s `PaddedList` does. The masks are then
the classes present in the transformed label map (ignore 255 left out), one mask per class, as the mapper builds
`instances.gt_masks`. The reference draws from numpy's and python's global RNGs; here every draw comes from the
per-sample `numpy.random.Generator` (`sampling.AugmentedDataset`), in the same order, with the same distributions:
`randrange(2)` / `randint(a, b)` / `uniform(a, b)` / `np.random.choice` / `np.random.randint(n)` map onto
`integers(2)` / `integers(a, b + 1)` / `uniform(a, b)` / `choice` / `integers(n)`.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_LABEL = 255


def shortest_edge_shape(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """detectron2 `ResizeShortestEdge.get_output_shape`."""
    scale = short_edge * 1.0 / min(h, w)
    newh, neww = (short_edge, scale * w) if h < w else (scale * h, short_edge)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def color_aug_ssd(image_rgb: np.ndarray, rng: np.random.Generator, *, brightness_delta: float = 32,
                  contrast: Tuple[float, float] = (0.5, 1.5), saturation: Tuple[float, float] = (0.5, 1.5),
                  hue_delta: int = 18) -> np.ndarray:
    """PointRend's `ColorAugSSDTransform.apply_image` on an RGB uint8 image (it works in BGR and OpenCV HSV)."""
    import cv2

    def convert(img, alpha=1.0, beta=0.0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def brightness(img):
        return convert(img, beta=rng.uniform(-brightness_delta, brightness_delta)) if rng.integers(2) else img

    def contrast_(img):
        return convert(img, alpha=rng.uniform(*contrast)) if rng.integers(2) else img

    def saturation_(img):
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=rng.uniform(*saturation))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return img

    def hue(img):
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + int(rng.integers(-hue_delta, hue_delta + 1))) % 180
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return img

    img = np.ascontiguousarray(image_rgb[:, :, [2, 1, 0]])
    img = brightness(img)
    if rng.integers(2):
        img = hue(saturation_(contrast_(img)))
    else:
        img = contrast_(hue(saturation_(img)))
    return np.ascontiguousarray(img[:, :, [2, 1, 0]])


def masks_from_label_map(label_map: np.ndarray, ignore_label: int = IGNORE_LABEL) -> Tuple[Tensor, Tensor]:
    """One mask per class present (ascending class index, ignore left out): `[N, H, W]` bool, `[N]` int64."""
    classes = np.unique(label_map)
    classes = classes[classes != ignore_label].astype(np.int64)
    masks = label_map[None] == classes.reshape(-1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray(masks)), torch.from_numpy(classes)


class SemanticAugmentation:
    """The `mask_former_semantic` training mapper on `{"image": uint8 [3, H, W], "semantic": int64 [H, W]}`.

    Args:
        short_edge_choices: ResizeShortestEdge lengths, one drawn per sample (`MIN_SIZE_TRAIN`, sampling "choice").
        max_size: `MAX_SIZE_TRAIN`.
        crop_size: the square absolute crop (`INPUT.CROP.SIZE`).
        single_category_max_area: `INPUT.CROP.SINGLE_CATEGORY_MAX_AREA` (1.0 = plain random crop).
        color_aug_ssd: `INPUT.COLOR_AUG_SSD`.
        hflip: the final `RandomFlip()`.
    """

    def __init__(self, short_edge_choices: Sequence[int], *, max_size: int, crop_size: int,
                 single_category_max_area: float = 1.0, color_aug_ssd: bool = True, hflip: bool = True,
                 ignore_label: int = IGNORE_LABEL):
        if not short_edge_choices or min(short_edge_choices) < 1 or max_size < 1 or crop_size < 1:
            raise ValueError(f"bad semantic augmentation sizes: choices {list(short_edge_choices)}, max {max_size}, "
                             f"crop {crop_size}")
        if not 0 < single_category_max_area <= 1.0:
            raise ValueError(f"single_category_max_area must be in (0, 1], got {single_category_max_area}")
        self.short_edge_choices = [int(s) for s in short_edge_choices]
        self.max_size = int(max_size)
        self.crop_size = int(crop_size)
        self.single_category_max_area = float(single_category_max_area)
        self.color_aug_ssd = bool(color_aug_ssd)
        self.hflip = bool(hflip)
        self.ignore_label = int(ignore_label)

    def _crop_origin(self, label_map: np.ndarray, rng: np.random.Generator) -> Tuple[int, int, int, int]:
        h, w = label_map.shape
        ch, cw = min(self.crop_size, h), min(self.crop_size, w)
        if self.single_category_max_area >= 1.0:
            return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw
        for _ in range(10):
            y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            labels, cnt = np.unique(label_map[y0:y0 + ch, x0:x0 + cw], return_counts=True)
            cnt = cnt[labels != self.ignore_label]
            if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * self.single_category_max_area:
                break
        return y0, x0, ch, cw

    def __call__(self, sample: Dict[str, Tensor], rng: np.random.Generator) -> Dict[str, Tensor]:
        from PIL import Image

        if "semantic" not in sample:
            raise KeyError("the semantic augmentation needs a 'semantic' label map (a semantic dataset such as "
                           "COCO-Stuff); panoptic data takes augmentation: lsj")
        image = sample["image"].permute(1, 2, 0).numpy()
        if image.dtype != np.uint8:
            raise ValueError(f"the semantic augmentation expects a uint8 image, got {image.dtype}")
        label = sample["semantic"].numpy().astype(np.float64)  # the mapper reads the label PNG as double
        h, w = label.shape
        nh, nw = shortest_edge_shape(h, w, int(rng.choice(self.short_edge_choices)), self.max_size)
        if (nh, nw) != (h, w):
            image = np.array(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR))
            label = F.interpolate(torch.from_numpy(np.ascontiguousarray(label))[None, None], (nh, nw),
                                  mode="nearest")[0, 0].numpy()
        y0, x0, ch, cw = self._crop_origin(label, rng)
        image, label = image[y0:y0 + ch, x0:x0 + cw], label[y0:y0 + ch, x0:x0 + cw]
        if self.color_aug_ssd:
            image = color_aug_ssd(image, rng)
        if self.hflip and rng.uniform() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        label_map = np.ascontiguousarray(label).astype(np.int64)
        masks, class_ids = masks_from_label_map(label_map, self.ignore_label)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
                "masks": masks, "class_ids": class_ids}
