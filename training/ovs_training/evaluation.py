"""Evaluation: mIoU from semantic maps, PQ / SQ / RQ from panoptic maps (COCO `panopticapi` `pq_compute` rules).

Semantic: a confusion matrix over pixels whose GT is not `ignore_index`; IoU per class, mean over classes that
occur in the GT or the prediction (detectron2 `SemSegEvaluator`, torchmetrics `MulticlassJaccardIndex` macro).

Panoptic: maps are `[H, W, 2]` (category id, instance id). Categories outside `things | stuffs` are void;
stuff segments ignore the instance id. Per image and category, a prediction and a GT segment match when their
IoU > 0.5, with the prediction's void pixels left out of the union. Unmatched GT segments are false negatives;
unmatched predictions are false positives unless more than half of them is GT void. Crowd regions are not
modelled (map them to void). Note: torchmetrics' `PanopticQuality` also drops a false negative that is mostly
*predicted* void and subtracts predicted void from the union; for predictions without void pixels the two agree.
"""
from __future__ import annotations

from typing import Collection, Dict

import numpy as np
import torch
from torch import Tensor


class SemanticEvaluator:
    """Accumulates a `[K, K]` confusion matrix (rows GT, columns prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """`pred`, `target`: integer class maps of the same shape (any leading dims)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        pred = pred.reshape(-1).long().cpu()
        target = target.reshape(-1).long().cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if bool(((target < 0) | (target >= self.num_classes)).any()):
            raise ValueError("target holds class ids outside [0, num_classes) other than ignore_index")
        if bool(((pred < 0) | (pred >= self.num_classes)).any()):
            raise ValueError("pred holds class ids outside [0, num_classes)")
        k = self.num_classes
        self.confusion += torch.bincount(target * k + pred, minlength=k * k).view(k, k)

    def compute(self) -> Dict[str, object]:
        """{"mIoU": float, "pixel_accuracy": float, "per_class_iou": [K] tensor (nan where absent)}."""
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        valid = union > 0
        miou = float(iou[valid].mean()) if bool(valid.any()) else float("nan")
        total = cm.sum()
        return {"mIoU": miou, "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
                "per_class_iou": iou}


class PanopticEvaluator:
    """PQ, SQ, RQ accumulated over images, per category and averaged (all / things / stuff).

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
        n = len(self.categories)
        self.iou_sum = np.zeros(n, dtype=np.float64)
        self.tp = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)

    def _segments(self, panoptic: np.ndarray) -> np.ndarray:
        """`[N, 2]` -> `[N]` int64 segment keys; -1 = void."""
        cat = panoptic[:, 0].astype(np.int64)
        inst = panoptic[:, 1].astype(np.int64)
        known = np.isin(cat, self.categories)
        inst = np.where(np.isin(cat, self.stuffs), 0, inst)
        if inst.size and (inst.min() < 0 or inst.max() >= 1 << 30):
            raise ValueError("instance ids must be in [0, 2^30)")
        return np.where(known, cat * (1 << 30) + inst, -1)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """One image or a batch: `[..., H, W, 2]` integer (category, instance) maps."""
        pred_np = np.asarray(torch.as_tensor(pred).cpu())
        target_np = np.asarray(torch.as_tensor(target).cpu())
        if pred_np.shape != target_np.shape or pred_np.shape[-1] != 2 or pred_np.ndim < 3:
            raise ValueError(f"pred and target must be [..., H, W, 2] of one shape, got {pred_np.shape} "
                             f"and {target_np.shape}")
        num_pixels = pred_np.shape[-3] * pred_np.shape[-2]
        for p, t in zip(pred_np.reshape(-1, num_pixels, 2), target_np.reshape(-1, num_pixels, 2)):
            self._update_image(self._segments(p), self._segments(t))

    def _update_image(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred_ids, pred_area = np.unique(pred, return_counts=True)
        gt_ids, gt_area = np.unique(gt, return_counts=True)
        pred_area_of = dict(zip(pred_ids.tolist(), pred_area.tolist()))
        gt_area_of = dict(zip(gt_ids.tolist(), gt_area.tolist()))
        pairs, inter = np.unique(np.stack([pred, gt], 1), axis=0, return_counts=True)
        inter_of = {(int(a), int(b)): int(n) for (a, b), n in zip(pairs, inter)}
        void_in_pred = {p: n for (p, g), n in inter_of.items() if g == -1}
        matched_pred, matched_gt = set(), set()
        for (p, g), n in inter_of.items():
            if p == -1 or g == -1 or p >> 30 != g >> 30:
                continue
            union = pred_area_of[p] + gt_area_of[g] - n - void_in_pred.get(p, 0)
            iou = n / union
            if iou > 0.5:
                k = self._index[g >> 30]
                matched_pred.add(p)
                matched_gt.add(g)
                self.tp[k] += 1
                self.iou_sum[k] += iou
        for g in gt_area_of:
            if g != -1 and g not in matched_gt:
                self.fn[self._index[g >> 30]] += 1
        for p, area in pred_area_of.items():
            if p != -1 and p not in matched_pred and void_in_pred.get(p, 0) / area <= 0.5:
                self.fp[self._index[p >> 30]] += 1

    def compute(self) -> Dict[str, object]:
        """{"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"} as fractions (0-1),
        averaged over categories with TP + FP + FN > 0, plus "per_class" {category: (pq, sq, rq)}."""
        sq = np.where(self.tp > 0, self.iou_sum / np.maximum(self.tp, 1), 0.0)
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        rq = np.where(denom > 0, self.tp / np.maximum(denom, 1e-12), 0.0)
        pq = sq * rq
        out: Dict[str, object] = {}
        n_th = len(self.things)
        for suffix, sel in (("", slice(None)), ("_th", slice(0, n_th)), ("_st", slice(n_th, None))):
            valid = denom[sel] > 0
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[name + suffix] = float(values[sel][valid].mean()) if valid.any() else float("nan")
        out["per_class"] = {c: (float(pq[i]), float(sq[i]), float(rq[i])) for i, c in enumerate(self.categories)}
        return out
