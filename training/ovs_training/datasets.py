"""Training data: GT masks with class ids (MaskCLIP++ region priors: things per instance, stuff per class).

Every dataset returns samples `{"image": uint8 [3, H, W], "masks": bool [N, H, W], "class_ids": int64 [N]}` with
class ids indexing the dataset's `vocabulary`; `collate_masks` pads a batch to the largest N with empty masks and
class id -1 (ignored by the loss).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ovs_ros.vocabulary import Vocabulary, VocabularyEntry

IGNORE_CLASS = -1

# Synthetic classes: each a colour and a shape, plus a stuff background; two synonyms where it helps the test of
# synonym sampling. Colours are RGB 0-255.
SYNTHETIC_CLASSES = (
    ("red square,red box", (220, 40, 40), "square"),
    ("green disc,green circle", (40, 200, 60), "disc"),
    ("blue triangle", (40, 60, 220), "triangle"),
    ("yellow bar,yellow stripe", (230, 210, 40), "bar"),
)
SYNTHETIC_BACKGROUND = "stuff:grey background,grey wall"


def collate_masks(samples: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
    """Images padded to the batch's largest H and W (bottom / right, value 0) with their sizes in `image_sizes`
    `[B, 2]`; masks to `[B, N_max, H, W]` (False) and class ids to `[B, N_max]` (-1). The model sets the padded
    pixels to 0 after normalisation (`MaskClassificationModel.pixel_values`), as MaskCLIP++'s `PaddedList` pads
    normalised images with 0; the LSJ recipe's images all have the crop size, so nothing is padded there."""
    sizes = torch.tensor([tuple(s["image"].shape[-2:]) for s in samples], dtype=torch.long)
    h, w = (int(v) for v in sizes.max(0).values)
    n_max = max(1, max(int(s["masks"].shape[0]) for s in samples))
    b = len(samples)
    images = torch.zeros(b, 3, h, w, dtype=samples[0]["image"].dtype)
    masks = torch.zeros(b, n_max, h, w, dtype=torch.bool)
    class_ids = torch.full((b, n_max), IGNORE_CLASS, dtype=torch.long)
    for i, s in enumerate(samples):
        n = int(s["masks"].shape[0])
        sh, sw = s["image"].shape[-2:]
        if tuple(s["masks"].shape[-2:]) != (sh, sw):
            raise ValueError(f"sample {i}: masks {tuple(s['masks'].shape[-2:])} != image {(sh, sw)}")
        images[i, :, :sh, :sw] = s["image"]
        masks[i, :n, :sh, :sw] = s["masks"]
        class_ids[i, :n] = s["class_ids"]
    return {"image": images, "masks": masks, "class_ids": class_ids, "image_sizes": sizes}


class SyntheticMaskDataset(Dataset):
    """Deterministic images of coloured shapes on a noisy grey background, with instance and stuff masks.

    Sample `i` depends only on (`seed`, `i`). Each image holds 1-3 shapes (a class may repeat, so the class
    reweighting of the loss is exercised) and the background as one stuff mask of the remaining pixels.

    Args:
        num_images: dataset length.
        image_size: square side in pixels.
        seed: base seed.
    """

    def __init__(self, num_images: int = 64, image_size: int = 96, seed: int = 0):
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.vocabulary = Vocabulary.from_strings([c[0] for c in SYNTHETIC_CLASSES] + [SYNTHETIC_BACKGROUND])

    def __len__(self) -> int:
        return self.num_images

    def _shape_mask(self, kind: str, cy: float, cx: float, r: float) -> np.ndarray:
        s = self.image_size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        if kind == "square":
            return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        if kind == "disc":
            return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if kind == "triangle":
            return (yy <= cy + r) & (yy - (cy - r) >= 2 * np.abs(xx - cx))
        if kind == "bar":
            return (np.abs(yy - cy) <= r / 3) & (np.abs(xx - cx) <= r * 1.4)
        raise ValueError(kind)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        s = self.image_size
        image = np.clip(rng.normal(128, 12, size=(s, s, 3)), 0, 255)
        occupied = np.zeros((s, s), dtype=bool)
        masks, class_ids = [], []
        for _ in range(int(rng.integers(1, 4))):
            cls = int(rng.integers(0, len(SYNTHETIC_CLASSES)))
            _, colour, kind = SYNTHETIC_CLASSES[cls]
            r = float(rng.uniform(0.14, 0.24) * s)
            cy, cx = rng.uniform(r, s - r, size=2)
            mask = self._shape_mask(kind, cy, cx, r) & ~occupied  # earlier shapes stay on top
            if mask.sum() < (s // 8) ** 2:
                continue
            image[mask] = np.asarray(colour) + rng.normal(0, 8, size=(int(mask.sum()), 3))
            occupied |= mask
            masks.append(mask)
            class_ids.append(cls)
        masks.append(~occupied)
        class_ids.append(len(SYNTHETIC_CLASSES))
        image_t = torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()
        return {"image": image_t, "masks": torch.from_numpy(np.stack(masks)),
                "class_ids": torch.tensor(class_ids, dtype=torch.long)}


def rgb_to_panoptic_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colour -> segment id: `R + 256 G + 256^2 B` (panopticapi `rgb2id`)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


class COCOPanopticDataset(Dataset):
    """COCO panoptic in its standard layout (also ADE20K / Cityscapes panoptic converted to it).

    Layout under `root` (detectron2's `datasets/coco`): `<split>/<image>.jpg`, `panoptic_<split>/<image>.png`
    (segment id = R + 256 G + 256^2 B, 0 = void) and `annotations/panoptic_<split>.json` (`images`,
    `annotations[].segments_info[]` with `id`, `category_id`, `iscrowd`, and `categories[]` with `id`, `name`,
    `isthing`). Crowd segments are left out (void), as in Mask2Former's panoptic mapper.

    Args:
        root: dataset root.
        split: e.g. "train2017", "val2017".
        vocabulary: optional class names with synonyms; each category is matched by `dataset_id` (the YAML `id`)
            and the vocabulary's order gives the class index. None = the JSON category names, in JSON order.

    Every non-crowd segment of `segments_info` gives a mask, also one the PNG does not contain (then empty), as
    MaskCLIP++'s mapper does; the training augmentation is applied by the trainer (`AugmentedDataset`).
    """

    def __init__(self, root: Union[str, Path], split: str = "train2017", *,
                 vocabulary: Optional[Vocabulary] = None):
        self.root = Path(root)
        self.split = split
        json_path = self.root / "annotations" / f"panoptic_{split}.json"
        if not json_path.is_file():
            raise FileNotFoundError(f"COCO panoptic annotations not found: {json_path}")
        with json_path.open("r", encoding="utf-8") as f:
            data = json.load(f)
        categories = data["categories"]
        if vocabulary is None:
            vocabulary = Vocabulary([
                VocabularyEntry((c["name"].replace("-merged", "").replace("-other", "").replace("-", " ").strip(),),
                                is_stuff=not c["isthing"], dataset_id=int(c["id"]))
                for c in categories
            ], allow_duplicate_labels=True)
        id_to_index = {e.dataset_id: i for i, e in enumerate(vocabulary.entries) if e.dataset_id is not None}
        missing = sorted(int(c["id"]) for c in categories if int(c["id"]) not in id_to_index)
        if missing:
            raise ValueError(f"{json_path}: category ids {missing} are not in the vocabulary (match by `id`)")
        self.vocabulary = vocabulary
        self.category_to_class = id_to_index
        images = {int(im["id"]): im for im in data["images"]}
        self.records: List[dict] = []
        for ann in data["annotations"]:
            image = images[int(ann["image_id"])]
            self.records.append({
                "image_path": self.root / split / image["file_name"],
                "panoptic_path": self.root / f"panoptic_{split}" / ann["file_name"],
                "segments_info": ann["segments_info"],
            })

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        rec = self.records[index]
        image = _read_rgb(rec["image_path"])
        seg_ids = rgb_to_panoptic_id(_read_rgb(rec["panoptic_path"]))
        if seg_ids.shape != image.shape[:2]:
            raise ValueError(f"{rec['panoptic_path']}: size {seg_ids.shape} != image {image.shape[:2]}")
        masks, class_ids = [], []
        for seg in rec["segments_info"]:
            if seg.get("iscrowd", 0):
                continue
            masks.append(seg_ids == int(seg["id"]))
            class_ids.append(self.category_to_class[int(seg["category_id"])])
        h, w = image.shape[:2]
        sample = {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool),
            "class_ids": torch.tensor(class_ids, dtype=torch.long),
        }
        return sample


class COCOStuffDataset(Dataset):
    """COCO-Stuff 164k for training, read through the evaluation layer's reader (`ovs_ros.evaluation.datasets.
    coco_stuff_split`: `coco/<split>/*.jpg`, `coco/stuffthingmaps_detectron2/<split>/*.png`, class index 0..170,
    unlabeled 255), so training and `ovs-eval` read one layout one way.

    A sample carries the label map (`semantic`, for `SemanticAugmentation`, which rebuilds the masks after its
    transform) and one mask per class present (for `augmentation: none`), as MaskCLIP++'s semantic mapper builds
    `gt_masks`. The class index is the label value, in the order of the `coco_stuff_171` vocabulary.
    """

    def __init__(self, root: Union[str, Path], split: str = "train2017", *,
                 vocabulary: Optional[Vocabulary] = None):
        from ovs_ros.evaluation.datasets import coco_stuff_split

        self.split_data = coco_stuff_split(root, split, vocabulary)
        self.vocabulary = self.split_data.vocabulary
        self.ignore_label = self.split_data.ignore_label

    def __len__(self) -> int:
        return len(self.split_data)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        from .semantic_augmentation import masks_from_label_map

        sample = self.split_data.samples[index]
        image = sample.load_image()
        label = sample.load_semantic()
        if label.shape != image.shape[:2]:
            raise ValueError(f"{sample.semantic_path}: size {label.shape} != image {image.shape[:2]}")
        known = (label == self.ignore_label) | ((label >= 0) & (label < len(self.vocabulary)))
        if not known.all():
            bad = sorted(set(np.unique(label[~known]).tolist()))
            raise ValueError(f"{sample.semantic_path}: label values {bad} are neither a class index (0.."
                             f"{len(self.vocabulary) - 1}) nor ignore {self.ignore_label}")
        masks, class_ids = masks_from_label_map(label, self.ignore_label)
        return {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                "semantic": torch.from_numpy(label), "masks": masks, "class_ids": class_ids}


def masks_to_id_map(masks: Tensor) -> np.ndarray:
    """`[N, H, W]` non-overlapping bool masks -> `[H, W]` int64 map (0 = no mask, i + 1 = mask i)."""
    m = masks.numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got {m.shape}")
    if m.shape[0] and int(m.sum(0, dtype=np.int64).max()) > 1:
        raise ValueError("masks overlap: the LSJ transform works on a panoptic id map (one segment per pixel)")
    if m.shape[0] >= 256 ** 3 - 1:
        raise ValueError(f"too many masks for an RGB id map: {m.shape[0]}")
    ids = np.zeros(m.shape[1:], dtype=np.int64)
    for i in range(m.shape[0]):
        ids[m[i]] = i + 1
    return ids


class LargeScaleJitter:
    """MaskCLIP++'s `coco_panoptic_lsj` training mapper (detectron2 / Mask2Former COCO panoptic LSJ), sample-wise.

    In order, as `COCOPanopticNewBaselineDatasetMapper.build_transform_gen` builds it:

    1. `RandomFlip(prob=0.5, horizontal)`: flip when `rng.uniform() < 0.5` (skipped, with no draw, if `hflip` is
       off: `INPUT.RANDOM_FLIP: none`).
    2. `ResizeScale(min_scale, max_scale, target, target)`: `scale = rng.uniform(min, max)`, the image scaled by
       `min(target * scale / h, target * scale / w)` to `np.round` of the scaled size; the image with PIL bilinear,
       the segmentation with PIL nearest (detectron2 `ResizeTransform`).
    3. `FixedSizeCrop((target, target))`: one `u = rng.uniform(0, 1)` for both axes, offset
       `np.round(max(size - target, 0) * u)`, crop, then pad right / bottom to the target: the image with 128, the
       segmentation with void.

    The masks travel as a panoptic id map, as the reference transforms the panoptic PNG, and are re-extracted after
    the transform; a mask the crop empties stays in the list (empty), as in the reference, and the loss drops it
    when `ignore_empty_masks` is set (MaskCLIP++ `IGNORE_EMPTY`). Crowd segments are void in the id map, so they are
    dropped whether before or after the transform. `rng` is a `numpy.random.Generator` the caller seeds per sample.
    """

    IMAGE_PAD_VALUE = 128

    def __init__(self, image_size: int, *, min_scale: float = 0.1, max_scale: float = 2.0, hflip: bool = True):
        if image_size < 1 or not 0 < min_scale <= max_scale:
            raise ValueError(f"bad LSJ settings: image_size {image_size}, scale {min_scale}..{max_scale}")
        self.image_size = int(image_size)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.hflip = bool(hflip)

    def __call__(self, sample: Dict[str, Tensor], rng: np.random.Generator) -> Dict[str, Tensor]:
        from PIL import Image

        image = sample["image"].permute(1, 2, 0).numpy()  # H, W, 3 uint8
        if image.dtype != np.uint8:
            raise ValueError(f"LSJ expects a uint8 image, got {image.dtype}")
        n = int(sample["masks"].shape[0])
        ids = masks_to_id_map(sample["masks"])
        seg = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        if self.hflip and rng.uniform() < 0.5:
            image, seg = image[:, ::-1], seg[:, ::-1]
        h, w = image.shape[:2]
        target = self.image_size
        target_scale_size = np.multiply((target, target), rng.uniform(self.min_scale, self.max_scale))
        output_scale = np.minimum(target_scale_size[0] / h, target_scale_size[1] / w)
        nh, nw = (int(v) for v in np.round(np.multiply((h, w), output_scale)).astype(int))
        if nh < 1 or nw < 1:
            raise ValueError(f"LSJ scaled a {h}x{w} image to {nh}x{nw}")
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR))
        seg = np.asarray(Image.fromarray(np.ascontiguousarray(seg)).resize((nw, nh), Image.NEAREST))
        max_offset = np.maximum(np.subtract((nh, nw), (target, target)), 0)
        oy, ox = (int(v) for v in np.round(np.multiply(max_offset, rng.uniform(0.0, 1.0))).astype(int))
        image, seg = image[oy:oy + target, ox:ox + target], seg[oy:oy + target, ox:ox + target]
        pad = ((0, target - image.shape[0]), (0, target - image.shape[1]))
        image = np.pad(image, pad + ((0, 0),), mode="constant", constant_values=self.IMAGE_PAD_VALUE)
        seg = np.pad(seg, pad + ((0, 0),), mode="constant", constant_values=0)  # 0 = void
        seg_ids = rgb_to_panoptic_id(seg)
        masks = torch.from_numpy(seg_ids[None] == np.arange(1, n + 1).reshape(n, 1, 1))
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
                "masks": masks, "class_ids": sample["class_ids"].clone()}
