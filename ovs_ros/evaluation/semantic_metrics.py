"""mIoU, fwIoU, mACC, pACC and mIoU(seen/unseen) exactly as MaskCLIP++'s `SemSegEvaluator`
(HVision-NKU/MaskCLIPpp `maskclippp/evaluation/semantic_evaluation.py`, over detectron2's `process`).

`process`: GT pixels equal to the ignore label become class K; the `[K + 1, K + 1]` confusion matrix is
`bincount((K + 1) * pred + gt)`, i.e. **rows are predictions, columns GT** (detectron2's layout, kept so the formulas
read as the reference's). `evaluate`, on the matrix without its last row and column: `acc = tp / pos_gt` over classes
with GT pixels; `iou = tp / union` over `iou_valid = (pos_gt > 0) & (union > 0)` (classes present in the GT, not
classes only predicted); `mIoU`, `mACC` the means over those; `fwIoU = sum iou * pos_gt / sum pos_gt`;
`pACC = sum tp / sum pos_gt`; `mIoU(S)` / `mIoU(U)` the mean over valid seen / unseen classes, reported only when the
vocabulary has both. All in percent, as the reference reports them.

The matrix is a sum over images, so per-image or per-shard statistics merge by addition (exact integers).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

IGNORE_LABEL = 255


class SemSegStats:
    """The `[K + 1, K + 1]` int64 confusion matrix (rows prediction, columns GT; index K = ignored GT)."""

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.conf_matrix = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def __iadd__(self, other: "SemSegStats") -> "SemSegStats":
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot add SemSegStats over {other.num_classes} classes to {self.num_classes}")
        self.conf_matrix += other.conf_matrix
        return self

    def __add__(self, other: "SemSegStats") -> "SemSegStats":
        out = SemSegStats(self.num_classes)
        out += self
        out += other
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemSegStats) and np.array_equal(self.conf_matrix, other.conf_matrix)

    def to_dict(self) -> dict:
        """Sparse form: flat indices and counts of the non-zero cells (an image touches few of (K+1)^2 cells)."""
        flat = self.conf_matrix.reshape(-1)
        index = np.nonzero(flat)[0]
        return {"num_classes": self.num_classes, "index": index.tolist(), "count": flat[index].tolist()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "SemSegStats":
        out = cls(int(data["num_classes"]))
        out.conf_matrix.reshape(-1)[np.asarray(data["index"], dtype=np.int64)] = np.asarray(data["count"],
                                                                                            dtype=np.int64)
        return out


def semseg_image_stats(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                       ignore_label: int = IGNORE_LABEL) -> SemSegStats:
    """Confusion matrix of one image (detectron2 `SemSegEvaluator.process`).

    `pred`: [H, W] class indices in `[0, K)` (an argmax, so never void); `gt`: [H, W] class indices in `[0, K)` or
    `ignore_label` (255, or 65535 for the 16-bit TIFF sets). Any other value is an error: the reference's bincount
    would silently file it under another cell.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be [H, W] of one shape")
    k = int(num_classes)
    pred = pred.astype(np.int64).reshape(-1)
    gt = gt.astype(np.int64).reshape(-1)
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(f"pred holds class indices outside [0, {k})")
    gt = np.where(gt == int(ignore_label), k, gt)
    if gt.size and (gt.min() < 0 or gt.max() > k):
        bad = np.unique(gt[(gt < 0) | (gt > k)])[:8].tolist()
        raise ValueError(f"gt holds values {bad} that are neither a class index in [0, {k}) nor {ignore_label}")
    stats = SemSegStats(k)
    stats.conf_matrix += np.bincount((k + 1) * pred + gt, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
    return stats


def semseg_summary(stats: SemSegStats, seen: Optional[Sequence[bool]] = None,
                   names: Optional[Sequence[str]] = None) -> dict:
    """The reference's `evaluate`: {"mIoU", "fwIoU", "mACC", "pACC"[, "mIoU(S)", "mIoU(U)"]} in percent, plus
    "per_class" {name: {"IoU", "ACC"}} (NaN where not valid) and "num_valid_classes"."""
    k = stats.num_classes
    conf = stats.conf_matrix
    acc = np.full(k, np.nan, dtype=float)
    iou = np.full(k, np.nan, dtype=float)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = np.sum(conf[:-1, :-1], axis=0).astype(float)
    pos_pred = np.sum(conf[:-1, :-1], axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_weights = pos_gt / np.sum(pos_gt)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou_valid = np.logical_and(acc_valid, union > 0)
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
        miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
        fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
        pacc = np.sum(tp) / np.sum(pos_gt)
    out = {"mIoU": 100 * float(miou), "fwIoU": 100 * float(fiou), "mACC": 100 * float(macc),
           "pACC": 100 * float(pacc)}
    if seen is not None:
        seen_mask = np.asarray(seen, dtype=bool)
        if seen_mask.shape != (k,):
            raise ValueError(f"seen must have {k} entries, got {seen_mask.shape}")
        num_seen = int(seen_mask.sum())
        if 0 < num_seen < k:  # the reference reports neither when all classes are seen or all unseen
            with np.errstate(divide="ignore", invalid="ignore"):
                valid_seen = np.logical_and(iou_valid, seen_mask)
                valid_unseen = np.logical_and(iou_valid, ~seen_mask)
                out["mIoU(S)"] = 100 * float(np.sum(iou[valid_seen]) / np.sum(valid_seen))
                out["mIoU(U)"] = 100 * float(np.sum(iou[valid_unseen]) / np.sum(valid_unseen))
    labels = list(names) if names is not None else [str(i) for i in range(k)]
    out["num_valid_classes"] = int(iou_valid.sum())
    out["per_class"] = {labels[i]: {"IoU": 100 * float(iou[i]), "ACC": 100 * float(acc[i])} for i in range(k)}
    return out
