"""COCO-Stuff-164k semantic segmentation as training masks (MAFT+ `openvocab_coco_2017_train_stuff_sem_seg`,
`maft/data/datasets/register_coco_stuff_164k.py`): one mask per class present in the label map.

Layout (detectron2's `datasets/prepare_coco_stuff_164k_sem_seg.py`, as Mask2Former / FC-CLIP / MAFT+ prepare it):
`<root>/<split>/<name>.jpg` and `<root>/stuffthingmaps_detectron2/<split>/<name>.png`, whose values are the 171
contiguous class indices (0..170, the order of `config/vocabularies/coco_stuff_171`), 255 = ignore. The masks
of one image do not overlap, so the LSJ transform takes them as it takes panoptic segments.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ovs_ros.vocabulary import Vocabulary

from .datasets import _read_rgb

IGNORE_LABEL = 255


class COCOStuffSemanticDataset(Dataset):
    """Images and per-class masks from a detectron2-style semantic label-map folder; label i = vocabulary class i."""

    LABEL_DIR = "stuffthingmaps_detectron2"

    def __init__(self, root: Union[str, Path], split: str = "train2017", *, vocabulary: Optional[Vocabulary] = None):
        self.root = Path(root)
        if vocabulary is None:
            from ovs_ros.paths import resolve_data_path

            vocabulary = Vocabulary.from_any(resolve_data_path("coco_stuff_171", "config/vocabularies"))
        self.vocabulary = vocabulary
        label_dir = self.root / self.LABEL_DIR / split
        if not label_dir.is_dir():
            raise FileNotFoundError(f"COCO-Stuff label maps not found: {label_dir}")
        self.records = []
        for label in sorted(label_dir.glob("*.png")):
            image = self.root / split / f"{label.stem}.jpg"
            if not image.is_file():
                raise FileNotFoundError(f"{label}: no image {image}")
            self.records.append((image, label))
        if not self.records:
            raise FileNotFoundError(f"no label maps in {label_dir}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        from PIL import Image

        image_path, label_path = self.records[index]
        image = _read_rgb(image_path)
        label = np.asarray(Image.open(label_path))
        if label.ndim != 2 or label.shape != image.shape[:2]:
            raise ValueError(f"{label_path}: label map {label.shape} does not fit image {image.shape[:2]}")
        values = [int(v) for v in np.unique(label) if int(v) != IGNORE_LABEL]
        if values and values[-1] >= len(self.vocabulary):
            raise ValueError(f"{label_path}: label {values[-1]} outside the {len(self.vocabulary)}-class vocabulary")
        h, w = label.shape
        masks = np.stack([label == v for v in values]) if values else np.zeros((0, h, w), dtype=bool)
        return {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                "masks": torch.from_numpy(masks), "class_ids": torch.tensor(values, dtype=torch.long)}
