"""COCO panoptic val2017 reader (PQ and the semantic labels made from it).

Layout (MaskCLIP++ `register_coco_panoptic_annos_semseg.py`,
`datasets/prepare_coco_semantic_annos_from_panoptic_annos.py`):
  coco/val2017/*.jpg
  coco/panoptic_val2017/*.png + coco/annotations/panoptic_val2017.json   (category ids 1..200 with gaps)
  coco/panoptic_semseg_val2017/*.png                                      (class index 0..132 in category order, every
                                                                           segment incl. crowd; unlabeled 255)
  coco/annotations/instances_val2017.json                                (instances, for AP; optional)
Crowd segments (`iscrowd: 1`) are handled in PQ as panopticapi does.

COCO-Stuff 164k (MaskCLIP++ `register_coco_stuff_164k.py`, the SAN / Mask2Former `prepare_coco_stuff.py` output):
  coco/{train2017,val2017}/*.jpg
  coco/stuffthingmaps_detectron2/{train2017,val2017}/*.png                (class index 0..170, unlabeled 255)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ovs_ros.vocabulary import Vocabulary

from .base import EvalDataset, check_vocabulary_size, coco_panoptic_dataset, load_vocabulary, semantic_dataset

VocabArg = Optional[Union[str, Path, Vocabulary]]


def coco_panoptic(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    base = Path(root).expanduser() / "coco"
    vocab = load_vocabulary(vocabulary, "coco_panoptic")
    check_vocabulary_size(vocab, 133, "COCO panoptic")
    return coco_panoptic_dataset("coco_panoptic", vocab, base / "val2017", base / "panoptic_val2017",
                                 base / "annotations" / "panoptic_val2017.json", base / "panoptic_semseg_val2017",
                                 instances_json=base / "annotations" / "instances_val2017.json")


def coco_stuff_split(root: Union[str, Path], split: str, vocabulary: VocabArg = None) -> EvalDataset:
    """A COCO-Stuff 164k split (`train2017` is MaskCLIP++'s COCO-Stuff training set, `val2017` its val, named
    `coco_stuff_171` as the benchmark)."""
    base = Path(root).expanduser() / "coco"
    vocab = load_vocabulary(vocabulary, "coco_stuff_171")
    check_vocabulary_size(vocab, 171, "COCO-Stuff")
    return semantic_dataset("coco_stuff_171" if split == "val2017" else f"coco_stuff_171_{split}", vocab, base / split,
                            base / "stuffthingmaps_detectron2" / split, "png", 255)


def coco_stuff_171(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    return coco_stuff_split(root, "val2017", vocabulary)
