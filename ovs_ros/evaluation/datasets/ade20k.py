"""ADE20K readers: ADE20K-150 panoptic + semantic, ADE20K-150 semantic, ADE20K-847 (full) semantic.

Layouts (MaskCLIP++ `register_ade20k_panoptic.py`, `register_ade20k_full.py`; `datasets/prepare_ade20k_*.py`):
  ADEChallengeData2016/images/validation/*.jpg
  ADEChallengeData2016/ade20k_panoptic_val/*.png + ade20k_panoptic_val.json   (category ids 0..149 = class index)
  ADEChallengeData2016/annotations_detectron2/validation/*.png                (class index, ignore 255)
  ADEChallengeData2016/ade20k_instance_val.json                               (instances, for AP; optional)
  ADE20K_2021_17_01/images_detectron2/validation/*.jpg
  ADE20K_2021_17_01/annotations_detectron2/validation/*.tif                   (16-bit class index, ignore 65535)
Every ADE20K panoptic segment is `iscrowd: 0` (prepare_ade20k_pan_seg.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ovs_ros.vocabulary import Vocabulary

from .base import EvalDataset, check_vocabulary_size, coco_panoptic_dataset, load_vocabulary, semantic_dataset

VocabArg = Optional[Union[str, Path, Vocabulary]]


def ade20k_150_panoptic(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    """ADE20K-150 val with panoptic (PQ) and semantic (mIoU) ground truth, as MaskCLIP++ evaluates it."""
    base = Path(root).expanduser() / "ADEChallengeData2016"
    vocab = load_vocabulary(vocabulary, "ade20k_150")
    check_vocabulary_size(vocab, 150, "ADE20K-150")
    return coco_panoptic_dataset("ade20k_150_panoptic", vocab, base / "images" / "validation",
                                 base / "ade20k_panoptic_val", base / "ade20k_panoptic_val.json",
                                 base / "annotations_detectron2" / "validation",
                                 instances_json=base / "ade20k_instance_val.json")


def ade20k_150(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    """ADE20K-150 val, semantic only (`openvocab_ade20k_sem_seg_val`)."""
    base = Path(root).expanduser() / "ADEChallengeData2016"
    vocab = load_vocabulary(vocabulary, "ade20k_150")
    check_vocabulary_size(vocab, 150, "ADE20K-150")
    return semantic_dataset("ade20k_150", vocab, base / "images" / "validation",
                            base / "annotations_detectron2" / "validation", "png", 255)


def ade20k_847(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    """ADE20K-847 val (`openvocab_ade20k_full_sem_seg_val`): 16-bit TIFF labels, ignore 65535."""
    base = Path(root).expanduser() / "ADE20K_2021_17_01"
    vocab = load_vocabulary(vocabulary, "ade20k_847")
    check_vocabulary_size(vocab, 847, "ADE20K-847")
    return semantic_dataset("ade20k_847", vocab, base / "images_detectron2" / "validation",
                            base / "annotations_detectron2" / "validation", "tif", 65535)
