"""Post-processing against slow reference loops (detectron2 panoptic_inference, MaskCLIP++ ensemble)."""
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovs_ros.postprocess import (
    build_segments,
    ensemble_class_probs,
    identity_lut,
    map_generator_logits,
    panoptic_merge,
    segment_boxes,
    semantic_map,
    semantic_probs,
)
from ovs_ros.results import SegmentInfo


# ------------------------------------------------------------------ reference oracles (never shipped)
def reference_panoptic_inference(mask_probs, class_probs, is_thing, object_mask_threshold, overlap_threshold):
    """detectron2/Mask2Former `panoptic_inference`, with probabilities as inputs (MaskCLIP++ variant)."""
    k = class_probs.shape[1] - 1
    scores, labels = class_probs.max(-1)
    keep = labels.ne(k) & (scores > object_mask_threshold)
    cur_scores = scores[keep]
    cur_classes = labels[keep]
    cur_masks = mask_probs[keep]
    cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
    h, w = mask_probs.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32)
    segments_info = []
    current_segment_id = 0
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info
    cur_mask_ids = cur_prob_masks.argmax(0)
    stuff_memory_list = {}
    for kk in range(cur_classes.shape[0]):
        pred_class = cur_classes[kk].item()
        isthing = bool(is_thing[pred_class])
        mask_area = (cur_mask_ids == kk).sum().item()
        original_area = (cur_masks[kk] >= 0.5).sum().item()
        mask = (cur_mask_ids == kk) & (cur_masks[kk] >= 0.5)
        if mask_area > 0 and original_area > 0 and mask.sum().item() > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing:
                if int(pred_class) in stuff_memory_list.keys():
                    panoptic_seg[mask] = stuff_memory_list[int(pred_class)]
                    seg = segments_info[stuff_memory_list[int(pred_class)] - 1]
                    seg["score"] = max(seg["score"], cur_scores[kk].item())
                    continue
                else:
                    stuff_memory_list[int(pred_class)] = current_segment_id + 1
            current_segment_id += 1
            panoptic_seg[mask] = current_segment_id
            segments_info.append({"id": current_segment_id, "isthing": isthing, "category_id": int(pred_class),
                                  "score": cur_scores[kk].item()})
    for s in segments_info:
        s["area"] = int((panoptic_seg == s["id"]).sum())
    return panoptic_seg, segments_info


def reference_map_logits(gen, lut, k_test):
    q = gen.shape[0]
    out = torch.zeros(q, k_test)
    for c in range(k_test):
        cols = [j for j in range(gen.shape[1]) if int(lut[j]) == c]
        if cols:
            out[:, c] = gen[:, cols].mean(1)
    return out


def reference_ensemble(clip_logits, gen, lut, seen, alpha, beta):
    q, k = clip_logits.shape
    p_clip = clip_logits.softmax(-1)
    p_gen = reference_map_logits(gen, lut, k).softmax(-1)
    out = torch.zeros(q, k + 1)
    p_void = gen.softmax(-1)[:, -1]
    for i in range(q):
        logit = torch.zeros(k)
        for c in range(k):
            a = alpha if seen[c] else beta
            logit[c] = np.log(float(p_gen[i, c]) ** (1 - a) * float(p_clip[i, c]) ** a + 1e-8)
        p = logit.softmax(-1)
        out[i, :k] = p * (1 - p_void[i])
        out[i, k] = p_void[i]
    return out


# ------------------------------------------------------------------ random cases
def make_case(seed, q, k, h, w):
    """Random merge inputs; `seed % 6` picks the kind: 0 partition-like, 1 partition + ties (quantised class logits,
    quantised masks, exact duplicate queries), 2 partition + empty and sub-0.5 masks, 3 soft cells, 4 all void,
    5 few dominant classes (much stuff merging)."""
    g = torch.Generator().manual_seed(seed)
    kind = seed % 6
    logits = torch.randn(q, k + 1, generator=g) * 3
    if kind == 1:
        logits = torch.randint(0, 3, (q, k + 1), generator=g).float()
    if kind == 5:
        logits = torch.randn(q, k + 1, generator=g)
        logits[:, :2] += 2
    class_probs = logits.softmax(-1)
    masks = torch.rand(q, h, w, generator=g)
    if kind in (0, 1, 2, 5):  # each query owns a Voronoi cell, plus noise and overlapping duplicate queries
        centers = torch.rand(q, 2, generator=g) * torch.tensor([h, w])
        yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        d = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
        own = d.argmin(0)[None] == torch.arange(q)[:, None, None]
        masks = torch.where(own, 0.55 + 0.45 * masks, 0.25 * masks)
        dup = min(3, q // 2)
        masks[q // 2: q // 2 + dup] = masks[:dup] * (1.0 if kind == 1 else 0.98)
        if kind == 1:
            class_probs[q // 2: q // 2 + dup] = class_probs[:dup]  # exact ties in score * mask
    if kind in (1, 2):
        masks = (masks * 4).floor() / 4  # many exact ties in the pixel argmax
    if kind == 2:
        masks[: q // 4] = 0.0  # empty masks
        masks[q // 4: q // 3] = 0.3  # below 0.5 everywhere: original_area == 0
    if kind == 3:  # soft cells: argmax pixels below 0.5 make the argmax area differ from the >= 0.5 part
        centers = torch.rand(q, 2, generator=g) * torch.tensor([h, w])
        yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        d = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
        own = d.argmin(0)[None] == torch.arange(q)[:, None, None]
        masks = torch.where(own, 0.3 + 0.7 * masks, 0.55 * masks)
    if kind == 4:  # all void
        class_probs = torch.zeros(q, k + 1)
        class_probs[:, -1] = 1.0
    is_thing = torch.rand(k, generator=g) < 0.5
    return masks, class_probs, is_thing


def assert_same(out, ref_pan, ref_segs, labels):
    assert torch.equal(out.panoptic, ref_pan)
    assert out.num_segments == len(ref_segs)
    assert out.segment_class.tolist() == [s["category_id"] for s in ref_segs]
    assert out.segment_is_thing.tolist() == [s["isthing"] for s in ref_segs]
    assert out.segment_area.tolist() == [s["area"] for s in ref_segs]
    np.testing.assert_allclose(out.segment_score.numpy(), [s["score"] for s in ref_segs], rtol=0, atol=0)
    segs = out.segments(labels)
    assert [s.id for s in segs] == [s["id"] for s in ref_segs]


@pytest.mark.parametrize("thresholds", [(0.0, 0.8), (0.2, 0.7), (0.0, 0.0), (0.5, 0.5)])
def test_panoptic_merge_matches_detectron2(thresholds):
    obj_t, ovl_t = thresholds
    n_segments_total = 0
    for seed in range(36):
        q, k = [(12, 5), (30, 8), (7, 3), (50, 20)][seed % 4]
        h, w = [(16, 16), (9, 23), (32, 20)][seed % 3]
        masks, class_probs, is_thing = make_case(seed, q, k, h, w)
        out = panoptic_merge(masks, class_probs, is_thing, object_mask_threshold=obj_t, overlap_threshold=ovl_t)
        ref_pan, ref_segs = reference_panoptic_inference(masks, class_probs, is_thing, obj_t, ovl_t)
        assert_same(out, ref_pan, ref_segs, [f"c{i}" for i in range(k)])
        blocked = panoptic_merge(masks, class_probs, is_thing, object_mask_threshold=obj_t,
                                 overlap_threshold=ovl_t, chunk_pixels=37)  # several pixel blocks, ragged tail
        assert_same(blocked, ref_pan, ref_segs, [f"c{i}" for i in range(k)])
        # the sync-free form (all Q columns, padded tables; what runs on CUDA) gives the same merge
        padded = panoptic_merge(masks, class_probs, is_thing, object_mask_threshold=obj_t, overlap_threshold=ovl_t,
                                padded=True, compact=False, chunk_pixels=37 if seed % 2 else None)
        assert padded.num_segments == q and int(padded.num_valid) == len(ref_segs)
        assert int(padded.segment_class[len(ref_segs):].abs().sum()) == 0  # padding rows are zeros
        assert_same(padded.trimmed(), ref_pan, ref_segs, [f"c{i}" for i in range(k)])
        assert torch.equal(padded.query_segment, out.query_segment)
        # query_segment agrees with the map: every segment id of a kept query appears in the panoptic map
        ids = set(out.query_segment.tolist()) - {0}
        assert ids == set(range(1, out.num_segments + 1))
        n_segments_total += out.num_segments
    print(f"\n[merge] thresholds {thresholds}: {n_segments_total} segments over 36 cases")
    assert n_segments_total > 30  # the cases exercise real merging, not only empty outputs


def test_panoptic_merge_stuff_merge_and_ids():
    # 4 queries, K = 2 (class 0 stuff, class 1 thing), 1x4 image, one column per query
    masks = torch.zeros(4, 1, 4)
    for i in range(4):
        masks[i, 0, i] = 0.9
    class_probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    out = panoptic_merge(masks, class_probs, [False, True], overlap_threshold=0.8)
    assert out.panoptic.tolist() == [[1, 2, 1, 0]]  # query 2 (stuff class 0) merges into segment 1; query 3 void
    assert out.segment_class.tolist() == [0, 1]
    assert out.segment_area.tolist() == [2, 1]
    assert out.query_segment.tolist() == [1, 2, 1, 0]
    assert out.segment_score.tolist() == pytest.approx([0.8, 0.8])


def test_panoptic_merge_argmax_pixels_all_below_half():
    """Query 1 wins pixels 2-3 only where its mask is < 0.5, while its >= 0.5 area (pixels 0-1) went to query 0:
    area ratio 2/2 passes, but the intersection is empty, so detectron2 makes no segment (and no id)."""
    masks = torch.tensor([[[0.9, 0.9, 0.4, 0.4]], [[0.6, 0.6, 0.45, 0.45]], [[0.0, 0.0, 0.0, 0.9]]])
    class_probs = torch.tensor([[0.5, 0.0, 0.0, 0.5 - 1e-3], [0.0, 0.49, 0.0, 0.51 - 0.49], [0.0, 0.0, 0.3, 0.2]])
    class_probs[2, 2] = 0.6
    for thr in (0.0, 0.8):
        out = panoptic_merge(masks, class_probs, [True, True, True], overlap_threshold=thr)
        ref_pan, ref_segs = reference_panoptic_inference(masks, class_probs, [True, True, True], 0.0, thr)
        assert_same(out, ref_pan, ref_segs, ["a", "b", "c"])
        assert out.query_segment[1] == 0


def test_panoptic_merge_all_below_threshold_and_empty():
    masks = torch.rand(5, 8, 8)
    class_probs = torch.full((5, 4), 0.25)
    class_probs[:, 0] = 0.26
    class_probs[:, -1] = 0.24
    out = panoptic_merge(masks, class_probs, [True, True, False], object_mask_threshold=0.5)
    assert out.num_segments == 0 and int(out.panoptic.abs().sum()) == 0
    assert out.panoptic.dtype == torch.int32 and out.panoptic.shape == (8, 8)
    assert out.segments(["a", "b", "c"]) == []
    padded = panoptic_merge(masks, class_probs, [True, True, False], object_mask_threshold=0.5, padded=True,
                            compact=False)
    assert int(padded.num_valid) == 0 and int(padded.panoptic.abs().sum()) == 0
    assert padded.trimmed().num_segments == 0
    for compact in (None, False):
        out = panoptic_merge(torch.zeros(0, 8, 8), torch.zeros(0, 4), [True, True, False], padded=True,
                             compact=compact)
        assert out.num_segments == 0 and int(out.num_valid) == 0


def test_panoptic_merge_validates():
    with pytest.raises(ValueError, match="mask_probs"):
        panoptic_merge(torch.rand(3, 4), torch.rand(3, 3), [True, False])
    with pytest.raises(ValueError, match="class_probs"):
        panoptic_merge(torch.rand(3, 4, 4), torch.rand(2, 3), [True, False])
    with pytest.raises(ValueError, match="is_thing"):
        panoptic_merge(torch.rand(3, 4, 4), torch.rand(3, 3), [True, False, True])


def test_map_generator_logits_mean_by_hand():
    # K_train = 4 (+ void), K_test = 3. train 0 -> test 1, train 1 -> test 1, train 2 -> unmatched, train 3 -> test 0
    gen = torch.tensor([[1.0, 3.0, 7.0, -2.0, 5.0]])
    lut = torch.tensor([1, 1, 3, 0, 3])
    out = map_generator_logits(gen, lut, 3)
    assert out.tolist() == [[-2.0, 2.0, 0.0]]  # test 2 has no training class -> logit 0; void dropped
    g = torch.Generator().manual_seed(0)
    gen = torch.randn(6, 9, generator=g)
    lut = torch.tensor([0, 2, 2, 5, 1, 5, 2, 5, 5])
    torch.testing.assert_close(map_generator_logits(gen, lut, 5), reference_map_logits(gen, lut, 5))
    with pytest.raises(ValueError, match="lut"):
        map_generator_logits(gen, lut[:-1], 5)


@pytest.mark.parametrize("alpha,beta", [(0.9, 1.0), (0.6, 1.0), (0.4, 0.8), (0.0, 0.0)])
def test_ensemble_matches_loop(alpha, beta):
    g = torch.Generator().manual_seed(1)
    q, k, k_train = 7, 6, 5
    clip_logits = torch.randn(q, k, generator=g) * 4
    gen = torch.randn(q, k_train + 1, generator=g) * 2
    lut = torch.tensor([0, 2, 6, 2, 4, 6])
    seen = np.array([True, False, True, False, True, False])
    out = ensemble_class_probs(clip_logits, gen, lut, seen, alpha, beta)
    ref = reference_ensemble(clip_logits, gen, lut, seen, alpha, beta)
    assert out.shape == (q, k + 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(-1), torch.ones(q))


def test_ensemble_clip_only_and_identity_lut():
    g = torch.Generator().manual_seed(2)
    clip_logits = torch.randn(4, 3, generator=g)
    gen = torch.randn(4, 4, generator=g)
    out = ensemble_class_probs(clip_logits, gen, identity_lut(3), [True, True, False], 1.0, 1.0)
    p_void = gen.softmax(-1)[:, -1:]
    expected = torch.cat([clip_logits.softmax(-1) * (1 - p_void), p_void], -1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_semantic_map_and_probs():
    pan = torch.tensor([[0, 1, 2], [2, 2, 0]], dtype=torch.int32)
    sem = semantic_map(pan, torch.tensor([4, 7]), void_id=9)
    assert sem.tolist() == [[9, 4, 7], [7, 7, 9]] and sem.dtype == torch.int32
    g = torch.Generator().manual_seed(3)
    masks, cls = torch.rand(5, 4, 6, generator=g), torch.rand(5, 4, generator=g)
    ref = torch.einsum("qc,qhw->chw", cls[:, :-1], masks)
    torch.testing.assert_close(semantic_probs(masks, cls), ref)


def test_segment_boxes_against_np_where():
    for seed in range(10):
        masks, class_probs, is_thing = make_case(seed * 6 + (seed % 2) * 5, 20, 6, 31, 17)
        out = panoptic_merge(masks, class_probs, is_thing, overlap_threshold=0.5)
        n = out.num_segments
        boxes = segment_boxes(out.panoptic, n)
        pan = out.panoptic.numpy()
        for i in range(n):
            ys, xs = np.where(pan == i + 1)
            assert boxes[i].tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    boxes = segment_boxes(torch.tensor([[0, 0], [0, 2]], dtype=torch.int32), 2)
    assert boxes.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]  # id 1 absent -> zeros; one pixel -> width 1


def test_build_segments_types():
    masks, class_probs, is_thing = make_case(0, 20, 6, 24, 24)
    out = panoptic_merge(masks, class_probs, is_thing, overlap_threshold=0.5)
    labels = [f"class{i}" for i in range(6)]
    segs = out.segments(labels)
    assert len(segs) == out.num_segments > 0
    for s in segs:
        assert isinstance(s, SegmentInfo)
        assert type(s.id) is int and type(s.area) is int and type(s.score) is float and type(s.is_thing) is bool
        assert s.label == labels[s.class_index] and len(s.bbox_xywh) == 4
        assert all(type(v) is int for v in s.bbox_xywh)
    with pytest.raises(ValueError, match="segment_boxes"):
        build_segments(out.segment_class, out.segment_score, out.segment_is_thing, out.segment_area,
                       torch.zeros(1, 4), labels)


def _time(fn, reps):
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


@pytest.mark.parametrize("size", [160])
def test_timing_report(size, capsys):
    """Q=100, K=150: ensemble + merge + semantic map + boxes (printed with -s; bound generous for a shared CPU)."""
    g = torch.Generator().manual_seed(0)
    q, k = 100, 150
    clip_logits = torch.randn(q, k, generator=g)
    gen = torch.randn(q, 134, generator=g)
    lut = torch.randint(0, k + 1, (134,), generator=g)
    lut[-1] = k
    seen = torch.rand(k, generator=g) < 0.5
    low = torch.randn(q, 1, size // 8, size // 8, generator=g) * 4
    masks = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")[:, 0].sigmoid()
    is_thing = torch.rand(k, generator=g) < 0.6

    def run():
        cp = ensemble_class_probs(clip_logits, gen, lut, seen, 0.9, 1.0)
        out = panoptic_merge(masks, cp, is_thing)
        semantic_map(out.panoptic, out.segment_class, k)
        out.segments([str(i) for i in range(k)])

    with torch.no_grad():
        ms = _time(run, 5)
    with capsys.disabled():
        print(f"\n[timing] ensemble+merge+semantic+segments Q={q} K={k} {size}x{size}: {ms:.1f} ms")
    assert ms < 2000


def test_masks_for_merge_resizes_down_to_the_output_only():
    """As MaskCLIP++: soft masks go to the original image size before the merge, unless that is larger than the
    generator frame (then the id map is resized instead)."""
    from ovs_ros.postprocess import masks_for_merge

    probs = torch.rand(1, 4, 64, 96, generator=torch.Generator().manual_seed(0))
    smaller = masks_for_merge(probs, (48, 72))
    torch.testing.assert_close(smaller, F.interpolate(probs, size=(48, 72), mode="bilinear", align_corners=False))
    assert masks_for_merge(probs, (64, 96)) is probs
    assert masks_for_merge(probs, (128, 192)) is probs  # larger output: merge on the generator frame
