"""PASCAL readers: Context 59 / 459 and VOC 20 / 21, semantic only.

Layouts (MaskCLIP++ `register_pascal_ctx_*_sem_seg.py`, `register_pascal_voc_*_semantic.py`,
`datasets/prepare_pascal_*`):
  pascal_ctx_d2/images/validation/*.jpg
  pascal_ctx_d2/annotations_ctx59/validation/*.png    (class index 0..58, ignore 255)
  pascal_ctx_d2/annotations_ctx459/validation/*.tif   (16-bit class index 0..458, ignore 65535)
  pascal_voc_d2/images/validation/*.jpg
  pascal_voc_d2/annotations_pascal21/validation/*.png (0 background .. 20, ignore 255)
  pascal_voc_d2/annotations_pascal20/validation/*.png (background ignored: 0..19 = VOC classes 1..20, ignore 255)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ovs_ros.vocabulary import Vocabulary

from .base import EvalDataset, check_vocabulary_size, load_vocabulary, semantic_dataset, sublist

VocabArg = Optional[Union[str, Path, Vocabulary]]


def pascal_context_59(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    base = Path(root).expanduser() / "pascal_ctx_d2"
    vocab = load_vocabulary(vocabulary, "pascal_context_59")
    check_vocabulary_size(vocab, 59, "PASCAL Context 59")
    return semantic_dataset("pascal_context_59", vocab, base / "images" / "validation",
                            base / "annotations_ctx59" / "validation", "png", 255)


def pascal_context_459(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    base = Path(root).expanduser() / "pascal_ctx_d2"
    vocab = load_vocabulary(vocabulary, "pascal_context_459")
    check_vocabulary_size(vocab, 459, "PASCAL Context 459")
    return semantic_dataset("pascal_context_459", vocab, base / "images" / "validation",
                            base / "annotations_ctx459" / "validation", "tif", 65535)


def pascal_voc_21(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    base = Path(root).expanduser() / "pascal_voc_d2"
    vocab = load_vocabulary(vocabulary, "pascal_voc_21")
    check_vocabulary_size(vocab, 21, "PASCAL VOC 21")
    return semantic_dataset("pascal_voc_21", vocab, base / "images" / "validation",
                            base / "annotations_pascal21" / "validation", "png", 255)


def pascal_voc_20(root: Union[str, Path], vocabulary: VocabArg = None) -> EvalDataset:
    """VOC without its background class: the 21-class vocabulary minus row 0 (MaskCLIP++ `[1:]`), unless given."""
    base = Path(root).expanduser() / "pascal_voc_d2"
    if vocabulary is None:
        vocab = sublist(load_vocabulary(None, "pascal_voc_21"), range(1, 21))
    else:
        vocab = load_vocabulary(vocabulary, "pascal_voc_20")
    check_vocabulary_size(vocab, 20, "PASCAL VOC 20")
    return semantic_dataset("pascal_voc_20", vocab, base / "images" / "validation",
                            base / "annotations_pascal20" / "validation", "png", 255)
