"""PQ / SQ / RQ exactly as COCO panopticapi's `pq_compute` (cocodataset/panopticapi `panopticapi/evaluation.py`).

Per image (`pq_compute_single_core`): GT and predicted segment ids are paired by pixel intersection. A pair of the
same category matches when `IoU > 0.5` (strict), where the union leaves out the prediction's pixels on GT void (id 0)
and crowd GT segments never match. Unmatched non-crowd GT segments are false negatives. An unmatched prediction is a
false positive unless more than half of it lies on GT void plus the crowd region of its own category (panopticapi
keeps one crowd segment per category: the last one listed). GT areas are the annotation's `area` when given (the
reference reads them from the json), else counted. Per category `PQ = sum IoU / (TP + FP/2 + FN/2)`, `SQ = sum IoU /
TP`, `RQ = TP / (TP + FP/2 + FN/2)`, averaged over the categories with `TP + FP + FN > 0` (all, things, stuff).

Categories are contiguous indices `0..C-1` (the readers map dataset ids to them; PQ does not depend on the naming).
Statistics are sums over images, so per-image and per-shard results merge by addition (`PQStats.__add__`): a
data-parallel evaluation that adds the same per-image statistics in the same order equals one process bit for bit.
One departure, documented: panopticapi raises when a listed prediction has no pixels; a segment table measured after
a resize may list one, so empty predicted segments are dropped (they could match nothing and cover no pixel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

VOID = 0


@dataclass(frozen=True)
class PanopticSegment:
    """One segment of a panoptic map: its id in the map, contiguous category, crowd flag, optional area (pixels)."""

    id: int
    category: int
    iscrowd: bool = False
    area: Optional[int] = None


class PQStats:
    """Per-category sums `iou`, `tp`, `fp`, `fn` (panopticapi `PQStat`); mergeable by `+`."""

    def __init__(self, num_categories: int):
        if num_categories < 1:
            raise ValueError(f"num_categories must be >= 1, got {num_categories}")
        self.num_categories = int(num_categories)
        self.iou = np.zeros(self.num_categories, dtype=np.float64)
        self.tp = np.zeros(self.num_categories, dtype=np.int64)
        self.fp = np.zeros(self.num_categories, dtype=np.int64)
        self.fn = np.zeros(self.num_categories, dtype=np.int64)

    def __iadd__(self, other: "PQStats") -> "PQStats":
        if other.num_categories != self.num_categories:
            raise ValueError(f"cannot add PQStats over {other.num_categories} categories to {self.num_categories}")
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def __add__(self, other: "PQStats") -> "PQStats":
        out = PQStats(self.num_categories)
        out += self
        out += other
        return out

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PQStats) and other.num_categories == self.num_categories
                and all(np.array_equal(getattr(self, k), getattr(other, k)) for k in ("iou", "tp", "fp", "fn")))

    def to_dict(self) -> dict:
        """Sparse, JSON-safe form (categories with any count); floats keep their exact value through `repr`."""
        used = np.nonzero((self.tp + self.fp + self.fn) > 0)[0]
        return {"num_categories": self.num_categories, "categories": used.tolist(), "iou": self.iou[used].tolist(),
                "tp": self.tp[used].tolist(), "fp": self.fp[used].tolist(), "fn": self.fn[used].tolist()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PQStats":
        out = cls(int(data["num_categories"]))
        idx = np.asarray(data["categories"], dtype=np.int64)
        out.iou[idx] = np.asarray(data["iou"], dtype=np.float64)
        for key in ("tp", "fp", "fn"):
            getattr(out, key)[idx] = np.asarray(data[key], dtype=np.int64)
        return out


def _segment_table(segments: Iterable[PanopticSegment], num_categories: int, what: str) -> Dict[int, PanopticSegment]:
    table: Dict[int, PanopticSegment] = {}
    for seg in segments:
        if seg.id == VOID:
            raise ValueError(f"{what} segment id 0 is reserved for void")
        if seg.id in table:
            raise ValueError(f"{what} segment id {seg.id} is listed twice")
        if not 0 <= seg.category < num_categories:
            raise ValueError(f"{what} segment {seg.id} has category {seg.category}, outside [0, {num_categories})")
        table[int(seg.id)] = seg
    return table


def pq_image_stats(
    gt_map: np.ndarray,
    gt_segments: Sequence[PanopticSegment],
    pred_map: np.ndarray,
    pred_segments: Sequence[PanopticSegment],
    num_categories: int,
) -> PQStats:
    """PQ statistics of one image (panopticapi `pq_compute_single_core` for one annotation pair).

    `gt_map`, `pred_map`: [H, W] non-negative integer segment ids (0 = void). GT ids absent from `gt_segments` are
    neither matched nor void (as in the reference); a predicted id > 0 absent from `pred_segments` is an error.
    """
    gt_map = np.asarray(gt_map)
    pred_map = np.asarray(pred_map)
    if gt_map.shape != pred_map.shape or gt_map.ndim != 2:
        raise ValueError(f"gt_map {gt_map.shape} and pred_map {pred_map.shape} must be [H, W] of one shape")
    if gt_map.size and (gt_map.min() < 0 or pred_map.min() < 0):
        raise ValueError("segment ids must be non-negative")
    stats = PQStats(num_categories)
    gt_segms = _segment_table(gt_segments, num_categories, "GT")
    pred_segms = _segment_table(pred_segments, num_categories, "predicted")

    gt_flat = gt_map.reshape(-1).astype(np.int64)
    pred_flat = pred_map.reshape(-1).astype(np.int64)
    pred_ids, pred_counts = np.unique(pred_flat, return_counts=True)
    pred_area = {}
    for label, count in zip(pred_ids.tolist(), pred_counts.tolist()):
        if label == VOID:
            continue
        if label not in pred_segms:
            raise ValueError(f"predicted segment id {label} is in the map but not in the segment list")
        pred_area[label] = count
    pred_segms = {k: v for k, v in pred_segms.items() if k in pred_area}  # empty listed segments dropped
    gt_area = {}
    if any(seg.area is None for seg in gt_segms.values()):
        gt_ids, gt_counts = np.unique(gt_flat, return_counts=True)
        counted = dict(zip(gt_ids.tolist(), gt_counts.tolist()))
    for label, seg in gt_segms.items():
        gt_area[label] = int(seg.area) if seg.area is not None else counted.get(label, 0)

    offset = int(pred_flat.max()) + 1 if pred_flat.size else 1
    pairs, inter_counts = np.unique(gt_flat * offset + pred_flat, return_counts=True)
    gt_pred_map = {(int(p // offset), int(p % offset)): int(n) for p, n in zip(pairs.tolist(), inter_counts.tolist())}

    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in gt_pred_map.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        gt_seg = gt_segms[gt_label]
        if gt_seg.iscrowd or gt_seg.category != pred_segms[pred_label].category:
            continue
        union = pred_area[pred_label] + gt_area[gt_label] - intersection - gt_pred_map.get((VOID, pred_label), 0)
        iou = intersection / union
        if iou > 0.5:
            stats.tp[gt_seg.category] += 1
            stats.iou[gt_seg.category] += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_of_category: Dict[int, int] = {}
    for gt_label, gt_seg in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_seg.iscrowd:
            crowd_of_category[gt_seg.category] = gt_label  # the last crowd segment of a category wins, as there
            continue
        stats.fn[gt_seg.category] += 1

    for pred_label, pred_seg in pred_segms.items():
        if pred_label in pred_matched:
            continue
        ignored = gt_pred_map.get((VOID, pred_label), 0)
        if pred_seg.category in crowd_of_category:
            ignored += gt_pred_map.get((crowd_of_category[pred_seg.category], pred_label), 0)
        if ignored / pred_area[pred_label] > 0.5:
            continue
        stats.fp[pred_seg.category] += 1
    return stats


def pq_summary(stats: PQStats, is_thing: Sequence[bool], names: Optional[Sequence[str]] = None) -> dict:
    """PQ, SQ, RQ in percent (as detectron2 reports panopticapi's numbers) for all / things (`_th`) / stuff (`_st`),
    the number of categories averaged (`n`, `n_th`, `n_st`), and `per_class` {name: {PQ, SQ, RQ, TP, FP, FN}} for
    the categories with any count. An average over no category is NaN (panopticapi would divide by zero)."""
    thing = np.asarray(is_thing, dtype=bool)
    if thing.shape != (stats.num_categories,):
        raise ValueError(f"is_thing must have {stats.num_categories} entries, got {thing.shape}")
    denom = stats.tp + 0.5 * stats.fp + 0.5 * stats.fn
    counted = (stats.tp + stats.fp + stats.fn) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(counted, stats.iou / np.where(counted, denom, 1.0), 0.0)
        sq = np.where(stats.tp > 0, stats.iou / np.maximum(stats.tp, 1), 0.0)
        rq = np.where(counted, stats.tp / np.where(counted, denom, 1.0), 0.0)
    out: dict = {}
    for suffix, select in (("", np.ones_like(thing)), ("_th", thing), ("_st", ~thing)):
        valid = counted & select
        n = int(valid.sum())
        for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
            # a sequential sum in category order, as `pq_average` adds them
            out[name + suffix] = 100.0 * (sum(values[valid].tolist()) / n) if n else float("nan")
        out["n" + suffix] = n
    labels: List[str] = list(names) if names is not None else [str(i) for i in range(stats.num_categories)]
    out["per_class"] = {
        labels[i]: {"PQ": 100.0 * float(pq[i]), "SQ": 100.0 * float(sq[i]), "RQ": 100.0 * float(rq[i]),
                    "TP": int(stats.tp[i]), "FP": int(stats.fp[i]), "FN": int(stats.fn[i])}
        for i in np.nonzero(counted)[0].tolist()
    }
    return out
