"""PQ and mIoU against literal re-statements of the references (panopticapi `pq_compute_single_core` / `pq_average`,
MaskCLIP++ `SemSegEvaluator.process` / `evaluate`) on adversarial and random cases, plus the two constructed cases
where the project's previous formulas and the references disagree."""
from collections import defaultdict

import numpy as np
import pytest

from ovs_ros.evaluation import (
    PanopticSegment,
    PQStats,
    SemSegStats,
    pq_image_stats,
    pq_summary,
    semseg_image_stats,
    semseg_summary,
)

# ------------------------------------------------------------------------------------------------ reference oracles
# panopticapi/evaluation.py (cocodataset/panopticapi), restated on in-memory id maps instead of PNG files.
OFFSET = 256 * 256 * 256
VOID = 0


class RefPQStatCat:
    def __init__(self):
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0

    def __iadd__(self, pq_stat_cat):
        self.iou += pq_stat_cat.iou
        self.tp += pq_stat_cat.tp
        self.fp += pq_stat_cat.fp
        self.fn += pq_stat_cat.fn
        return self


class RefPQStat:
    def __init__(self):
        self.pq_per_cat = defaultdict(RefPQStatCat)

    def __getitem__(self, i):
        return self.pq_per_cat[i]

    def __iadd__(self, pq_stat):
        for label, pq_stat_cat in pq_stat.pq_per_cat.items():
            self.pq_per_cat[label] += pq_stat_cat
        return self

    def pq_average(self, categories, isthing):
        pq, sq, rq, n = 0, 0, 0, 0
        per_class_results = {}
        for label, label_info in categories.items():
            if isthing is not None:
                cat_isthing = label_info['isthing'] == 1
                if isthing != cat_isthing:
                    continue
            iou = self.pq_per_cat[label].iou
            tp = self.pq_per_cat[label].tp
            fp = self.pq_per_cat[label].fp
            fn = self.pq_per_cat[label].fn
            if tp + fp + fn == 0:
                per_class_results[label] = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
                continue
            n += 1
            pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_class = iou / tp if tp != 0 else 0
            rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class_results[label] = {'pq': pq_class, 'sq': sq_class, 'rq': rq_class}
            pq += pq_class
            sq += sq_class
            rq += rq_class
        return {'pq': pq / n, 'sq': sq / n, 'rq': rq / n, 'n': n}, per_class_results


def ref_pq_compute_single_core(annotation_set, categories):
    pq_stat = RefPQStat()
    for (pan_gt, gt_ann), (pan_pred, pred_ann) in annotation_set:
        pan_gt = pan_gt.astype(np.uint32)
        pan_pred = pan_pred.astype(np.uint32)
        gt_segms = {el['id']: dict(el) for el in gt_ann['segments_info']}
        pred_segms = {el['id']: dict(el) for el in pred_ann['segments_info']}

        pred_labels_set = set(el['id'] for el in pred_ann['segments_info'])
        labels, labels_cnt = np.unique(pan_pred, return_counts=True)
        for label, label_cnt in zip(labels, labels_cnt):
            if label not in pred_segms:
                if label == VOID:
                    continue
                raise KeyError('segment with ID {} is presented in PNG and not presented in JSON.'.format(label))
            pred_segms[label]['area'] = label_cnt
            pred_labels_set.remove(label)
            if pred_segms[label]['category_id'] not in categories:
                raise KeyError('unknown category_id')
        if len(pred_labels_set) != 0:
            raise KeyError('segment IDs {} are presented in JSON and not in PNG.'.format(list(pred_labels_set)))

        pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
        gt_pred_map = {}
        labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
        for label, intersection in zip(labels, labels_cnt):
            gt_id = label // OFFSET
            pred_id = label % OFFSET
            gt_pred_map[(gt_id, pred_id)] = intersection

        gt_matched = set()
        pred_matched = set()
        for label_tuple, intersection in gt_pred_map.items():
            gt_label, pred_label = label_tuple
            if gt_label not in gt_segms:
                continue
            if pred_label not in pred_segms:
                continue
            if gt_segms[gt_label]['iscrowd'] == 1:
                continue
            if gt_segms[gt_label]['category_id'] != pred_segms[pred_label]['category_id']:
                continue
            union = (pred_segms[pred_label]['area'] + gt_segms[gt_label]['area'] - intersection
                     - gt_pred_map.get((VOID, pred_label), 0))
            iou = intersection / union
            if iou > 0.5:
                pq_stat[gt_segms[gt_label]['category_id']].tp += 1
                pq_stat[gt_segms[gt_label]['category_id']].iou += iou
                gt_matched.add(gt_label)
                pred_matched.add(pred_label)

        crowd_labels_dict = {}
        for gt_label, gt_info in gt_segms.items():
            if gt_label in gt_matched:
                continue
            if gt_info['iscrowd'] == 1:
                crowd_labels_dict[gt_info['category_id']] = gt_label
                continue
            pq_stat[gt_info['category_id']].fn += 1

        for pred_label, pred_info in pred_segms.items():
            if pred_label in pred_matched:
                continue
            intersection = gt_pred_map.get((VOID, pred_label), 0)
            if pred_info['category_id'] in crowd_labels_dict:
                intersection += gt_pred_map.get((crowd_labels_dict[pred_info['category_id']], pred_label), 0)
            if intersection / pred_info['area'] > 0.5:
                continue
            pq_stat[pred_info['category_id']].fp += 1
    return pq_stat


# MaskCLIP++ maskclippp/evaluation/semantic_evaluation.py over detectron2's SemSegEvaluator.process, restated.
class RefSemSegEvaluator:
    def __init__(self, num_classes, ignore_label, category_overlapping_mask=None):
        self._num_classes = num_classes
        self._ignore_label = ignore_label
        self._conf_matrix = np.zeros((self._num_classes + 1, self._num_classes + 1), dtype=np.int64)
        self._category_overlapping_mask = category_overlapping_mask

    def process(self, pred, gt):
        pred = np.array(pred, dtype=np.int64)
        gt = np.array(gt, dtype=np.int64)
        gt[gt == self._ignore_label] = self._num_classes
        self._conf_matrix += np.bincount(
            (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
            minlength=self._conf_matrix.size,
        ).reshape(self._conf_matrix.shape)

    def evaluate(self):
        acc = np.full(self._num_classes, np.nan, dtype=float)
        iou = np.full(self._num_classes, np.nan, dtype=float)
        tp = self._conf_matrix.diagonal()[:-1].astype(float)
        pos_gt = np.sum(self._conf_matrix[:-1, :-1], axis=0).astype(float)
        class_weights = pos_gt / np.sum(pos_gt)
        pos_pred = np.sum(self._conf_matrix[:-1, :-1], axis=1).astype(float)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou_valid = np.logical_and(acc_valid, union > 0)
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
        miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
        fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
        pacc = np.sum(tp) / np.sum(pos_gt)
        if self._category_overlapping_mask is not None:
            num_seen = np.sum(self._category_overlapping_mask)
            if num_seen == 0 or num_seen == self._num_classes:
                miou_seen = miou_unseen = None
            else:
                iou_valid_seen = np.logical_and(iou_valid, self._category_overlapping_mask)
                iou_valid_unseen = np.logical_and(iou_valid, ~self._category_overlapping_mask)
                miou_seen = np.sum(iou[iou_valid_seen]) / np.sum(iou_valid_seen)
                miou_unseen = np.sum(iou[iou_valid_unseen]) / np.sum(iou_valid_unseen)
        else:
            miou_seen = miou_unseen = None
        res = {"mIoU": 100 * miou}
        if miou_seen is not None:
            res["mIoU(S)"] = 100 * miou_seen
        if miou_unseen is not None:
            res["mIoU(U)"] = 100 * miou_unseen
        res["fwIoU"] = 100 * fiou
        for i in range(self._num_classes):
            res[f"IoU-{i}"] = 100 * iou[i]
        res["mACC"] = 100 * macc
        res["pACC"] = 100 * pacc
        for i in range(self._num_classes):
            res[f"ACC-{i}"] = 100 * acc[i]
        return res


# ------------------------------------------------------------------------------------------------ helpers
def _ann(segments):
    return {"segments_info": [{"id": s.id, "category_id": s.category, "iscrowd": int(s.iscrowd),
                               **({"area": s.area} if s.area is not None else {})} for s in segments]}


def _with_area(gt_map, segments):
    ids, counts = np.unique(gt_map, return_counts=True)
    area = dict(zip(ids.tolist(), counts.tolist()))
    return [PanopticSegment(s.id, s.category, s.iscrowd, area.get(s.id, 0)) for s in segments]


def assert_pq_matches_reference(images, is_thing):
    """`images`: [(gt_map, gt_segments, pred_map, pred_segments)]; compares every statistic and every average."""
    k = len(is_thing)
    categories = {c: {"id": c, "isthing": int(t)} for c, t in enumerate(is_thing)}
    ref = ref_pq_compute_single_core(
        [((g, _ann(_with_area(g, gs))), (p, _ann(ps))) for g, gs, p, ps in images], categories)
    ours = PQStats(k)
    for g, gs, p, ps in images:
        ours += pq_image_stats(g, gs, p, ps, k)
    for c in range(k):
        r = ref.pq_per_cat[c]
        assert (ours.tp[c], ours.fp[c], ours.fn[c]) == (r.tp, r.fp, r.fn), f"category {c}"
        assert ours.iou[c] == r.iou, f"category {c}"
    summary = pq_summary(ours, is_thing)
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        if not any((r.tp + r.fp + r.fn) > 0 and (isthing is None or bool(is_thing[c]) == isthing)
                   for c, r in ref.pq_per_cat.items()):
            assert np.isnan(summary["PQ" + suffix])
            continue
        avg, per_class = ref.pq_average(categories, isthing)
        assert summary["PQ" + suffix] == 100 * avg["pq"]
        assert summary["SQ" + suffix] == 100 * avg["sq"]
        assert summary["RQ" + suffix] == 100 * avg["rq"]
        assert summary["n" + suffix] == avg["n"]
    return ours, summary


def _segs(pairs, crowd=()):
    return [PanopticSegment(i, c, i in crowd) for i, c in pairs]


# ------------------------------------------------------------------------------------------------ PQ cases
def test_crowd_case_differs_from_crowd_as_void():
    """A person prediction bleeds 60 px into a person crowd region; a second one lies inside the crowd. panopticapi:
    person IoU 100/160 = 0.625 (the crowd is not subtracted from the union), the second is no FP; sky is perfect,
    so PQ = (0.625 + 1) / 2 = 81.25. The previous code (crowd mapped to void) gave 100."""
    gt = np.full((20, 20), 3, dtype=np.int64)  # sky
    gt[0:10, 0:10] = 1  # person
    gt[10:20, 0:10] = 2  # person crowd
    gt_segments = _segs([(1, 0), (2, 0), (3, 1)], crowd={2})
    pred = np.full((20, 20), 7, dtype=np.int64)
    pred[0:10, 0:10] = 5
    pred[10:16, 0:10] = 5  # 60 px into the crowd
    pred[16:20, 0:10] = 6  # inside the crowd only
    pred_segments = _segs([(5, 0), (6, 0), (7, 1)])
    stats, summary = assert_pq_matches_reference([(gt, gt_segments, pred, pred_segments)], [True, False])
    assert summary["PQ"] == pytest.approx(81.25)
    assert stats.tp[0] == 1 and stats.fp[0] == 0 and stats.fn[0] == 0 and stats.iou[0] == pytest.approx(0.625)
    # crowd as void, the old rule, gives a perfect score on the same data
    gt_void = np.where(gt == 2, 0, gt)
    old = pq_image_stats(gt_void, _segs([(1, 0), (3, 1)]), pred, pred_segments, 2)
    assert pq_summary(old, [True, False])["PQ"] == pytest.approx(100.0)


def test_iou_exactly_half_does_not_match():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[0, 0:4] = 1  # 4 px
    pred = np.zeros((4, 4), dtype=np.int64)
    pred[0, 0:2] = 1  # 2 px inside: IoU 2 / 4 = 0.5
    pred[1, 0:2] = 0
    stats, summary = assert_pq_matches_reference([(gt, _segs([(1, 0)]), pred, _segs([(1, 0)]))], [True])
    assert (stats.tp[0], stats.fp[0], stats.fn[0]) == (0, 1, 1)
    assert summary["PQ"] == 0.0
    pred[0, 2] = 1  # 3 / 4 > 0.5 matches
    stats, _ = assert_pq_matches_reference([(gt, _segs([(1, 0)]), pred, _segs([(1, 0)]))], [True])
    assert (stats.tp[0], stats.fp[0], stats.fn[0]) == (1, 0, 0)
    assert stats.iou[0] == pytest.approx(0.75)


def test_predicted_void_and_gt_void():
    gt = np.zeros((6, 6), dtype=np.int64)
    gt[:, :4] = 1
    pred = np.zeros((6, 6), dtype=np.int64)  # prediction void over part of the GT: counts against IoU
    pred[:, :2] = 1
    pred[:, 4:] = 2  # lies on GT void only: ignored, not an FP
    stats, _ = assert_pq_matches_reference([(gt, _segs([(1, 0)]), pred, _segs([(1, 0), (2, 1)]))], [True, False])
    assert (stats.tp[0], stats.fn[0], stats.fp[1]) == (0, 1, 0)
    assert stats.fp[0] == 1  # 12 / 24 = 0.5 IoU does not match, and the prediction is not on void


def test_only_predicted_class_and_absent_class_and_empty_image():
    gt = np.ones((5, 5), dtype=np.int64)
    pred = np.ones((5, 5), dtype=np.int64)
    pred[0] = 2  # a class never in the GT
    images = [(gt, _segs([(1, 0)]), pred, _segs([(1, 0), (2, 2)])),
              (np.zeros((3, 3), dtype=np.int64), [], np.zeros((3, 3), dtype=np.int64), [])]  # empty image
    stats, summary = assert_pq_matches_reference(images, [True, False, True, False])
    assert stats.fp[2] == 1 and summary["n"] == 2  # categories 1 and 3 have no counts and are not averaged
    assert np.isnan(pq_summary(PQStats(4), [True] * 4)["PQ"])


def test_last_crowd_segment_of_a_category_wins():
    """Two crowd regions of one category: panopticapi only credits overlap with the last one listed."""
    gt = np.zeros((4, 8), dtype=np.int64)
    gt[:, 0:4] = 1
    gt[:, 4:8] = 2
    pred = np.zeros((4, 8), dtype=np.int64)
    pred[:, 0:4] = 9  # inside the first crowd only: an FP, because only crowd 2 is remembered
    for order in ([(1, 0), (2, 0)], [(2, 0), (1, 0)]):
        assert_pq_matches_reference([(gt, _segs(order, crowd={1, 2}), pred, _segs([(9, 0)]))], [True])
    first = pq_image_stats(gt, _segs([(1, 0), (2, 0)], crowd={1, 2}), pred, _segs([(9, 0)]), 1)
    second = pq_image_stats(gt, _segs([(2, 0), (1, 0)], crowd={1, 2}), pred, _segs([(9, 0)]), 1)
    assert (first.fp[0], second.fp[0]) == (1, 0)


def test_gt_area_from_annotation_is_used():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:2] = 1
    pred = gt.copy()
    stats = pq_image_stats(gt, [PanopticSegment(1, 0, False, area=16)], pred, _segs([(1, 0)]), 1)
    assert stats.iou[0] == 0.0 and stats.fn[0] == 1  # 8 / 16 = 0.5 with the json area: no match


def test_bad_predictions_are_errors():
    gt = np.ones((3, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="not in the segment list"):
        pq_image_stats(gt, _segs([(1, 0)]), gt, [], 1)
    with pytest.raises(ValueError, match="category"):
        pq_image_stats(gt, _segs([(1, 0)]), gt, _segs([(1, 3)]), 1)
    with pytest.raises(ValueError, match="shape"):
        pq_image_stats(gt, _segs([(1, 0)]), gt[:2], _segs([(1, 0)]), 1)
    # an empty listed prediction is dropped (panopticapi would raise): it can match nothing
    stats = pq_image_stats(gt, _segs([(1, 0)]), gt, _segs([(1, 0), (2, 0)]), 1)
    assert (stats.tp[0], stats.fp[0]) == (1, 0)


def _random_panoptic(rng, h, w, num_categories, is_thing, crowd_rate, void_rate, start_id):
    """Blocky random maps: rectangles painted over each other, so IoUs spread around 0.5."""
    ids = np.zeros((h, w), dtype=np.int64)
    segments = []
    next_id = start_id
    stuff_ids = {}
    for _ in range(rng.integers(1, 9)):
        c = int(rng.integers(num_categories))
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        if not is_thing[c] and c in stuff_ids:
            seg_id = stuff_ids[c]
        else:
            seg_id = next_id
            next_id += 1
            crowd = bool(is_thing[c] and rng.random() < crowd_rate)
            segments.append(PanopticSegment(seg_id, c, crowd))
            if not is_thing[c]:
                stuff_ids[c] = seg_id
        ids[y0:y1, x0:x1] = seg_id
    if void_rate:
        ids[rng.random((h, w)) < void_rate] = 0
    present = set(np.unique(ids).tolist())
    return ids, [s for s in segments if s.id in present]


def test_random_images_match_panopticapi():
    rng = np.random.default_rng(0)
    is_thing = [True, True, True, False, False, True, False]
    for _ in range(30):
        images = []
        for _ in range(4):
            gt, gs = _random_panoptic(rng, 16, 24, len(is_thing), is_thing, 0.3, 0.05, 1)
            pred, ps = _random_panoptic(rng, 16, 24, len(is_thing), is_thing, 0.0, 0.1 * rng.random(), 40)
            images.append((gt, gs, pred, ps))
        assert_pq_matches_reference(images, is_thing)


def test_pq_stats_merge_and_serialise_exactly():
    rng = np.random.default_rng(1)
    is_thing = [True, False, True, False]
    per_image = []
    for _ in range(12):
        gt, gs = _random_panoptic(rng, 12, 12, 4, is_thing, 0.2, 0.05, 1)
        pred, ps = _random_panoptic(rng, 12, 12, 4, is_thing, 0.0, 0.05, 30)
        per_image.append(pq_image_stats(gt, gs, pred, ps, 4))
    total = PQStats(4)
    for s in per_image:
        total += PQStats.from_dict(s.to_dict())
    direct = PQStats(4)
    for s in per_image:
        direct += s
    assert total == direct and total.tp.sum() > 0


# ------------------------------------------------------------------------------------------------ mIoU cases
def _semseg_compare(pairs, k, ignore_label=255, seen=None):
    ref = RefSemSegEvaluator(k, ignore_label, None if seen is None else np.asarray(seen, dtype=bool))
    ours = SemSegStats(k)
    for pred, gt in pairs:
        ref.process(pred, gt)
        ours += semseg_image_stats(pred, gt, k, ignore_label)
    with np.errstate(divide="ignore", invalid="ignore"):  # the reference divides 0 / 0 where a split is empty
        expected = ref.evaluate()
    got = semseg_summary(ours, seen)
    np.testing.assert_array_equal(ours.conf_matrix, ref._conf_matrix)
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "mIoU(S)", "mIoU(U)"):
        assert (key in got) == (key in expected), key
        if key in got:
            np.testing.assert_equal(got[key], expected[key])
    for i in range(k):
        np.testing.assert_equal(got["per_class"][str(i)]["IoU"], expected[f"IoU-{i}"])
        np.testing.assert_equal(got["per_class"][str(i)]["ACC"], expected[f"ACC-{i}"])
    return got


def test_miou_averages_over_classes_in_the_gt_only():
    """10 classes, 4 (6..9) never in the GT but predicted on some pixels. The reference averages over the 6 GT
    classes; the previous code (union > 0: GT or prediction) also averaged the 4 zeros in."""
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 6, size=(40, 40))
    pred = gt.copy()
    wrong = rng.random((40, 40)) < 0.3
    pred[wrong] = rng.integers(6, 10, size=int(wrong.sum()))
    got = _semseg_compare([(pred, gt)], 10)
    assert got["num_valid_classes"] == 6
    stats = semseg_image_stats(pred, gt, 10)
    cm = stats.conf_matrix[:-1, :-1].astype(float)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    old = float(np.mean(tp[union > 0] / union[union > 0])) * 100
    assert got["mIoU"] == pytest.approx(100 * np.mean(tp[:6] / union[:6]))
    assert got["mIoU"] - old > 20  # e.g. 70 vs 42: the two rules are far apart on such data


def test_ignore_label_prediction_only_classes_empty_gt_and_16_bit_ignore():
    k = 5
    gt = np.array([[0, 0, 255, 1], [1, 255, 2, 2]])
    pred = np.array([[0, 4, 3, 1], [0, 0, 2, 4]])
    _semseg_compare([(pred, gt)], k)
    _semseg_compare([(pred, gt), (pred, np.full_like(gt, 255))], k)  # an all-ignored image adds nothing
    gt16 = np.where(gt == 255, 65535, gt).astype(np.uint16)
    got16 = _semseg_compare([(pred, gt16)], k, ignore_label=65535)
    assert got16["mIoU"] == _semseg_compare([(pred, gt)], k)["mIoU"]
    with pytest.raises(ValueError, match="neither a class index"):
        semseg_image_stats(pred, gt, k, ignore_label=65535)  # 255 is no class of a 16-bit set
    with pytest.raises(ValueError, match="pred"):
        semseg_image_stats(np.full_like(gt, 5), gt, k)


def test_seen_unseen_split_as_the_reference():
    rng = np.random.default_rng(4)
    pairs = [(rng.integers(0, 8, (10, 12)), np.where(rng.random((10, 12)) < 0.1, 255, rng.integers(0, 8, (10, 12))))
             for _ in range(3)]
    seen = [True, False, True, True, False, False, True, False]
    got = _semseg_compare(pairs, 8, seen=seen)
    assert "mIoU(S)" in got and "mIoU(U)" in got
    assert "mIoU(S)" not in _semseg_compare(pairs, 8, seen=[True] * 8)  # all seen: not reported


def test_random_semseg_matches_reference():
    rng = np.random.default_rng(5)
    for _ in range(20):
        k = int(rng.integers(2, 30))
        pairs = []
        for _ in range(3):
            gt = rng.integers(0, max(1, k // 2), (9, 13))
            gt[rng.random(gt.shape) < 0.2] = 255
            pred = rng.integers(0, k, (9, 13))
            pairs.append((pred, gt))
        _semseg_compare(pairs, k, seen=list(rng.random(k) < 0.5))


def test_semseg_stats_merge_and_serialise_exactly():
    rng = np.random.default_rng(6)
    parts = [semseg_image_stats(rng.integers(0, 7, (8, 8)), rng.integers(0, 7, (8, 8)), 7) for _ in range(5)]
    total = SemSegStats(7)
    for p in parts:
        total += SemSegStats.from_dict(p.to_dict())
    assert total == parts[0] + parts[1] + parts[2] + parts[3] + parts[4]
    assert total.conf_matrix.sum() == 5 * 64
