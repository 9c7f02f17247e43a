"""COCO panoptic val2017 reader (PQ and the semantic labels made from it).

Layout (MaskCLIP++ `register_coco_panoptic_annos_semseg.py`,
`datasets/prepare_coco_semantic_annos_from_panoptic_annos.py`):
  coco/val2017/*.jpg
  coco/panoptic_val2017/*.png + coco/annotations/panoptic_val2017.json   (category ids 1..200 with gaps)
  coco/panoptic_semseg_val2017/*.png                                      (class index 0..132 in category order, every
                                                                           segment incl. crowd; unlabeled 255)
  coco/annotations/instances_val2017.json                                (instances, for AP; optional)
Crowd segments (`iscrowd: 1`) are handled in PQ as panopticapi does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ovs_ros.vocabulary import Vocabulary

from .base import EvalDataset, check_vocabulary_size, coco_panoptic_dataset, load_vocabulary

VocabArg = Optional[Union[str, Path, Vocabulary]]


def coco_panoptic(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    base = Path(root).expanduser() / "coco"
    vocab = load_vocabulary(vocabulary, "coco_panoptic")
    check_vocabulary_size(vocab, 133, "COCO panoptic")
    return coco_panoptic_dataset("coco_panoptic", vocab, base / "val2017", base / "panoptic_val2017",
                                 base / "annotations" / "panoptic_val2017.json", base / "panoptic_semseg_val2017",
                                 instances_json=base / "annotations" / "instances_val2017.json")
