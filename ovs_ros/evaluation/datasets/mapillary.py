"""Mapillary Vistas panoptic val reader (PQ and mIoU).

Layout (MaskCLIP++ `register_mapillary_vistas_panoptic.py`):
  mapillary_vistas/validation/images/*.jpg
  mapillary_vistas/validation/panoptic/*.png + panoptic_2018.json   (category ids 1..65)
  mapillary_vistas/validation/labels/*.png                          (class index 0..64, ignore 65 as the reference)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ovs_ros.vocabulary import Vocabulary

from .base import EvalDataset, check_vocabulary_size, coco_panoptic_dataset, load_vocabulary

VocabArg = Optional[Union[str, Path, Vocabulary]]


def mapillary_vistas_panoptic(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    base = Path(root).expanduser() / "mapillary_vistas" / "validation"
    vocab = load_vocabulary(vocabulary, "mapillary_vistas")
    check_vocabulary_size(vocab, 65, "Mapillary Vistas")
    return coco_panoptic_dataset("mapillary_vistas_panoptic", vocab, base / "images", base / "panoptic",
                                 base / "panoptic_2018.json", base / "labels", ignore_label=65)
