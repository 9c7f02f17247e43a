"""Evaluation for training runs: batch-friendly accumulators over `ovs_ros.evaluation`, the metrics exact to the
references (COCO panopticapi `pq_compute`; MaskCLIP++ `SemSegEvaluator`, mIoU over classes present in the GT).

No second implementation lives here: each image goes through `semseg_image_stats` / `pq_image_stats` and the
averages are `semseg_summary` / `pq_summary`, all in percent as the references report them. Whole-split evaluation
of a Segmenter (readers of the standard layouts, semantic inference, resume, torchrun) is `ovs-eval`.
"""
from __future__ import annotations

from typing import Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ovs_ros.evaluation import (
    PanopticSegment,
    PQStats,
    SemSegStats,
    pq_image_stats,
    pq_summary,
    semseg_image_stats,
    semseg_summary,
)


class SemanticEvaluator:
    """mIoU, fwIoU, mACC, pACC (and mIoU(S)/(U) when `seen` is given) over a stream of class maps."""

    def __init__(self, num_classes: int, ignore_index: int = 255, seen: Optional[Sequence[bool]] = None):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.seen = None if seen is None else np.asarray(seen, dtype=bool)
        self.stats = SemSegStats(self.num_classes)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """`pred`, `target`: integer class maps `[..., H, W]` of one shape; `target` may hold `ignore_index`."""
        if tuple(pred.shape) != tuple(target.shape) or pred.ndim < 2:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be [..., H, W] alike")
        h, w = pred.shape[-2:]
        pred_np = torch.as_tensor(pred).detach().cpu().numpy().reshape(-1, h, w)
        target_np = torch.as_tensor(target).detach().cpu().numpy().reshape(-1, h, w)
        for p, t in zip(pred_np, target_np):
            self.stats += semseg_image_stats(p, t, self.num_classes, self.ignore_index)

    def compute(self) -> Dict[str, object]:
        """`semseg_summary` (percent) plus "per_class_iou": [K] array in percent, NaN where not valid."""
        out = semseg_summary(self.stats, self.seen)
        out["per_class_iou"] = np.array([out["per_class"][str(i)]["IoU"] for i in range(self.num_classes)])
        return out


def category_instance_to_segments(
    panoptic: np.ndarray, index_of: Dict[int, int], stuffs: Collection[int], crowd: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, List[PanopticSegment]]:
    """`[H, W, 2]` (category id, instance id) -> an id map (0 = void) and its segments.

    Categories outside `index_of` are void; stuff ignores the instance id (one segment per stuff category, as a
    panoptic merge produces it); `crowd` ([H, W] bool, optional) marks pixels of crowd regions (one crowd segment per
    category, as COCO annotates them).
    """
    cat = panoptic[..., 0].astype(np.int64)
    inst = np.where(np.isin(cat, list(stuffs)), 0, panoptic[..., 1].astype(np.int64))
    is_crowd = np.zeros(cat.shape, dtype=bool) if crowd is None else np.asarray(crowd, dtype=bool)
    known = np.isin(cat, list(index_of))
    keys = np.stack([cat, np.where(is_crowd, -1, inst)], -1)[known]
    ids = np.zeros(cat.shape, dtype=np.int64)
    segments: List[PanopticSegment] = []
    if keys.size:
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        ids[known] = inverse.reshape(-1) + 1
        segments = [PanopticSegment(i + 1, index_of[int(c)], bool(n == -1)) for i, (c, n) in enumerate(unique)]
    return ids, segments


class PanopticEvaluator:
    """PQ, SQ, RQ (all / things / stuff) over `[..., H, W, 2]` (category id, instance id) maps.

    Args:
        things: category ids of thing classes.
        stuffs: category ids of stuff classes (disjoint from things).
    """

    def __init__(self, things: Collection[int], stuffs: Collection[int]):
        self.things = sorted({int(c) for c in things})
        self.stuffs = sorted({int(c) for c in stuffs})
        if set(self.things) & set(self.stuffs):
            raise ValueError(f"things and stuffs overlap: {sorted(set(self.things) & set(self.stuffs))}")
        self.categories = self.things + self.stuffs
        self._index = {c: i for i, c in enumerate(self.categories)}
        self.is_thing = [True] * len(self.things) + [False] * len(self.stuffs)
        self.stats = PQStats(len(self.categories))

    def update(self, pred: Tensor, target: Tensor, target_crowd: Optional[Tensor] = None) -> None:
        """One image or a batch; `target_crowd` ([..., H, W] bool) marks GT crowd pixels."""
        pred_np = np.asarray(torch.as_tensor(pred).cpu())
        target_np = np.asarray(torch.as_tensor(target).cpu())
        if pred_np.shape != target_np.shape or pred_np.shape[-1] != 2 or pred_np.ndim < 3:
            raise ValueError(f"pred and target must be [..., H, W, 2] of one shape, got {pred_np.shape} "
                             f"and {target_np.shape}")
        h, w = pred_np.shape[-3:-1]
        crowd_np = (np.zeros(target_np.shape[:-1], dtype=bool) if target_crowd is None
                    else np.asarray(torch.as_tensor(target_crowd).cpu(), dtype=bool))
        for p, t, c in zip(pred_np.reshape(-1, h, w, 2), target_np.reshape(-1, h, w, 2), crowd_np.reshape(-1, h, w)):
            pred_ids, pred_segments = category_instance_to_segments(p, self._index, self.stuffs)
            gt_ids, gt_segments = category_instance_to_segments(t, self._index, self.stuffs, c)
            self.stats += pq_image_stats(gt_ids, gt_segments, pred_ids, pred_segments, len(self.categories))

    def compute(self) -> Dict[str, object]:
        """`pq_summary` in percent; "per_class" keyed by category id."""
        return pq_summary(self.stats, self.is_thing, [str(c) for c in self.categories])
