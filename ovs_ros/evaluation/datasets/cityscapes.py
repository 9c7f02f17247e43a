"""Cityscapes panoptic val reader (PQ).

Layout (MaskCLIP++ `register_cityscapes_panoptic.py`):
  cityscapes/leftImg8bit/val/<city>/<image_id>_leftImg8bit.png
  cityscapes/gtFine/cityscapes_panoptic_val/*.png + cityscapes_panoptic_val.json   (cityscapesscripts
      createPanopticImgs.py; category ids are label ids, class index = trainId = vocabulary row)
Cityscapes mIoU is left out: the reference measures it with cityscapesscripts' evaluator, not SemSegEvaluator.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ovs_ros.vocabulary import Vocabulary

from .base import (
    DatasetLayoutError,
    EvalDataset,
    check_vocabulary_size,
    coco_panoptic_dataset,
    load_vocabulary,
    require,
)

VocabArg = Optional[Union[str, Path, Vocabulary]]
SUFFIX = "_leftImg8bit.png"


def cityscapes_panoptic(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    base = Path(root).expanduser() / "cityscapes"
    vocab = load_vocabulary(vocabulary, "cityscapes")
    check_vocabulary_size(vocab, 19, "Cityscapes")
    image_dir = require(base / "leftImg8bit" / "val", "image folder")
    images = {p.name[: -len(SUFFIX)]: p for p in image_dir.glob(f"*/*{SUFFIX}")}  # image id -> file, as the reference

    def image_of(ann: dict) -> Path:
        if ann["image_id"] not in images:
            raise DatasetLayoutError(f"no image {ann['image_id']}{SUFFIX} under {image_dir}/<city>/")
        return images[ann["image_id"]]

    return coco_panoptic_dataset("cityscapes_panoptic", vocab, image_dir, base / "gtFine" / "cityscapes_panoptic_val",
                                 base / "gtFine" / "cityscapes_panoptic_val.json", None, image_of=image_of)
