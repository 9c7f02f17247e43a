"""Pure tensor post-processing: generator-logit mapping, CLIP/generator ensemble, panoptic merge, segment table.

Every function is stateless, runs on the device of its inputs and is vectorised over queries and segments (no Python
loop with `.item()`); the only host transfer is the final `build_segments`. Each is checked in
`test/test_postprocess.py` against a slow reference loop (detectron2 `panoptic_inference` for the merge).

Conventions: Q queries, K test classes (the vocabulary), K_train generator training classes; class vectors carry a
trailing void column (`[Q, K + 1]`); masks are probabilities (sigmoid already applied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .results import SegmentInfo

__all__ = [
    "PanopticMergeOutput",
    "identity_lut",
    "map_generator_logits",
    "ensemble_class_probs",
    "panoptic_merge",
    "masks_for_merge",
    "panoptic_at_size",
    "semantic_map",
    "semantic_probs",
    "semantic_inference",
    "instance_inference",
    "segment_boxes",
    "build_segments",
]

BoolLike = Union[Tensor, np.ndarray, Sequence[bool]]


def _check(t: object, name: str, ndim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def _as_bool(x: BoolLike, name: str, length: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, device=device)
    if t.ndim != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape [{length}], got {tuple(t.shape)}")
    return t.to(torch.bool)


def identity_lut(num_classes: int, device: Union[str, torch.device] = "cpu") -> Tensor:
    """LUT for a generator whose classifier already is the test vocabulary (FC-CLIP, MAFT+): class k -> k, void -> K."""
    return torch.arange(num_classes + 1, dtype=torch.long, device=device)


def map_generator_logits(gen_class_logits: Tensor, lut: Tensor, num_test_classes: int) -> Tensor:
    """[Q, K_train + 1] generator logits -> [Q, K_test]: each test class gets the mean of the logits mapped to it,
    0 where none is (corrections.md item 10; MaskCLIP++ `scatter_reduce_(..., "mean", include_self=False)`).

    `lut` [K_train + 1] long from `vocabulary.train_to_test_lut`; entries equal to `num_test_classes` (unmatched
    training classes and the void logit) go to an extra column that is dropped.
    """
    _check(gen_class_logits, "gen_class_logits", 2)
    _check(lut, "lut", 1)
    if lut.shape[0] != gen_class_logits.shape[1]:
        raise ValueError(f"lut has {lut.shape[0]} entries, gen_class_logits has {gen_class_logits.shape[1]} columns")
    q = gen_class_logits.shape[0]
    index = lut.to(device=gen_class_logits.device, dtype=torch.long).unsqueeze(0).expand(q, -1)
    out = gen_class_logits.new_zeros(q, num_test_classes + 1)
    out = out.scatter_reduce(1, index, gen_class_logits, reduce="mean", include_self=False)
    return out[:, :num_test_classes]


def ensemble_class_probs(
    clip_logits: Tensor,
    gen_class_logits: Tensor,
    lut: Tensor,
    seen: BoolLike,
    alpha: float,
    beta: float,
) -> Tensor:
    """Geometric CLIP/generator ensemble with void, -> [Q, K + 1] probabilities (corrections.md item 9).

    `p = softmax_K(log(p_gen^(1-a) * p_clip^a + 1e-8))` with `a = alpha` on seen classes, `beta` on unseen ones
    (`a` is the exponent on CLIP: 1.0 = CLIP only); `p_gen` is the softmax over the test classes of the mapped
    generator logits; `p_void` is the generator's own void probability (softmax over its classes + void); the
    result is `[p * (1 - p_void), p_void]`.
    """
    _check(clip_logits, "clip_logits", 2)
    _check(gen_class_logits, "gen_class_logits", 2)
    q, k = clip_logits.shape
    if gen_class_logits.shape[0] != q:
        raise ValueError(f"gen_class_logits has {gen_class_logits.shape[0]} queries, clip_logits has {q}")
    seen_t = _as_bool(seen, "seen", k, clip_logits.device)
    clip_logits = clip_logits.float()
    gen_class_logits = gen_class_logits.float()
    p_clip = clip_logits.softmax(-1)
    p_gen = map_generator_logits(gen_class_logits, lut, k).softmax(-1)
    a = torch.where(seen_t, float(alpha), float(beta))  # Python scalars: no per-frame upload
    p = torch.log(p_gen.pow(1.0 - a) * p_clip.pow(a) + 1e-8).softmax(-1)
    p_void = gen_class_logits.softmax(-1)[:, -1:]
    return torch.cat([p * (1.0 - p_void), p_void], dim=-1)


@dataclass
class PanopticMergeOutput:
    """Result of `panoptic_merge` (N segments, ids 1..N in order of creation = query order).

    panoptic: [H, W] int32 segment id, 0 = void.
    segment_class: [N] int64 class index. segment_score: [N] float, max class probability over the segment's
        queries (several only for merged stuff). segment_is_thing: [N] bool. segment_area: [N] int64 pixels.
    query_segment: [Q] int64 segment id each query ended in (0 = dropped), e.g. for instance masks or debugging.
    num_valid: None, or (`panoptic_merge(padded=True)`) a 0-dim int64 device tensor: the segment tables then have a
        fixed number of rows (an upper bound, the kept queries), the first `num_valid` are the segments, the rest
        zeros; knowing N needs no host sync.
    """

    panoptic: Tensor
    segment_class: Tensor
    segment_score: Tensor
    segment_is_thing: Tensor
    segment_area: Tensor
    query_segment: Tensor
    num_valid: Optional[Tensor] = None

    @property
    def num_segments(self) -> int:
        """Rows of the segment tables (padded: an upper bound of the segments)."""
        return int(self.segment_class.shape[0])

    def trimmed(self) -> "PanopticMergeOutput":
        """The exact-size tables of a padded merge (one host sync for N)."""
        if self.num_valid is None:
            return self
        n = int(self.num_valid)
        return PanopticMergeOutput(self.panoptic, self.segment_class[:n], self.segment_score[:n],
                                   self.segment_is_thing[:n], self.segment_area[:n], self.query_segment)

    def segments(self, labels: Sequence[str]) -> List[SegmentInfo]:
        """`build_segments` at the merge resolution (boxes from `segment_boxes`)."""
        return build_segments(self.segment_class, self.segment_score, self.segment_is_thing, self.segment_area,
                              segment_boxes(self.panoptic, self.num_segments), labels)


def panoptic_merge(
    mask_probs: Tensor,
    class_probs: Tensor,
    is_thing: BoolLike,
    *,
    object_mask_threshold: float = 0.0,
    overlap_threshold: float = 0.8,
    chunk_pixels: Optional[int] = None,
    padded: bool = False,
    compact: Optional[bool] = None,
) -> PanopticMergeOutput:
    """Merge per-query masks into a panoptic map with detectron2 `panoptic_inference` semantics (corrections.md 11-12).

    Args:
        mask_probs: [Q, H, W] mask probabilities.
        class_probs: [Q, K + 1] class probabilities, last column void.
        is_thing: [K] bool per class; stuff queries of one class merge into that class's first segment.
        object_mask_threshold: keep queries whose top class (over K + 1) is not void and whose score exceeds this.
        overlap_threshold: drop a query when its argmax area / its `>= 0.5` area is below this.
        chunk_pixels: pixels per block of the argmax pass; None = about 4 MB blocks on CPU (cache-resident, 4-5x
            faster than one [Q, H*W] pass at 640x640), one block on GPU.
        padded: segment tables with a fixed number of rows and `num_valid` on the device (no host sync for N).
        compact: gather the kept queries first (`nonzero`: a host sync on CUDA, so the argmax is over P <= Q
            columns) or run over all Q with the dropped ones pushed below every kept product (no sync). None: compact
            on the CPU only, where a sync costs nothing and fewer columns are faster. The results are identical.

    With `padded=True, compact=False` nothing here waits for the device (test/test_sync_audit.py).

    Queries are visited in query order (no sort by score). A query's argmax pixels over the kept queries' `score * mask`
    that also have `mask >= 0.5` form its segment. Vectorised: one argmax, per-query areas by `bincount`, stuff merging
    by a per-class first-query `scatter_reduce`, ids by a cumulative sum, the map by one LUT gather.
    """
    _check(mask_probs, "mask_probs", 3)
    _check(class_probs, "class_probs", 2)
    q, h, w = mask_probs.shape
    if class_probs.shape[0] != q:
        raise ValueError(f"class_probs has {class_probs.shape[0]} queries, mask_probs has {q}")
    k = class_probs.shape[1] - 1
    device = mask_probs.device
    thing = _as_bool(is_thing, "is_thing", k, device)

    scores, labels = class_probs.max(-1)  # over K + 1, as detectron2: a void argmax drops the query
    keep = (labels != k) & (scores > object_mask_threshold)
    if compact is None:
        compact = device.type == "cpu"
    compact = compact or q == 0
    query_segment = torch.zeros(q, dtype=torch.long, device=device)
    offset = None
    if compact:
        kept_idx = keep.nonzero().squeeze(1)  # [P] query indices, query order
        p = kept_idx.shape[0]
        if p == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return PanopticMergeOutput(torch.zeros(h, w, dtype=torch.int32, device=device), empty,
                                       scores.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=device),
                                       empty.clone(), query_segment,
                                       empty.new_zeros(()) if padded else None)
        cur_scores = scores.index_select(0, kept_idx)
        cur_labels = labels.index_select(0, kept_idx)
        cur_keep = None
    else:  # all Q columns; a dropped query's product is pushed below 0, so it never wins a pixel a kept one can
        kept_idx = torch.arange(q, device=device)
        p = q
        cur_scores = scores
        cur_labels = torch.where(keep, labels, torch.zeros_like(labels))  # void -> any class: it is invalid below
        cur_keep = keep
        offset = torch.where(keep, 0.0, -2.0).to(mask_probs.dtype)
    ids, hit, original_area = _kept_argmax(mask_probs.reshape(q, h * w), kept_idx, cur_scores, chunk_pixels, offset)
    if cur_keep is not None:
        hit = hit & cur_keep.index_select(0, ids)  # no kept query at all: every pixel is void
    mask_area = _count(ids, p)
    inter_area = _count(ids, p, hit)
    ratio_ok = ~(mask_area.double() / original_area.clamp_min(1).double() < overlap_threshold)
    valid = (mask_area > 0) & (original_area > 0) & (inter_area > 0) & ratio_ok  # [P]
    if cur_keep is not None:
        valid = valid & cur_keep

    # Stuff: the first valid query of a class owns the segment; later ones merge into it.
    pos = torch.arange(p, device=device)
    cur_thing = thing.index_select(0, cur_labels)
    stuff_valid = valid & ~cur_thing
    first_of_class = torch.full((k + 1,), p, dtype=torch.long, device=device)  # column k: not stuff / not valid
    first_of_class = first_of_class.scatter_reduce(0, torch.where(stuff_valid, cur_labels, k), pos, reduce="amin")
    owner = torch.where(cur_thing, pos, first_of_class.index_select(0, cur_labels).clamp_max(p - 1))
    creates = valid & (owner == pos)
    creator_id = torch.cumsum(creates.long(), 0) * creates  # 1..N at creating positions
    seg_of_pos = torch.where(valid, creator_id.index_select(0, owner), torch.zeros_like(creator_id))  # [P]

    pix_seg = seg_of_pos.index_select(0, ids) * hit  # [HW]
    panoptic = pix_seg.view(h, w).to(torch.int32)
    query_segment.index_copy_(0, kept_idx, seg_of_pos)

    # Tables with P rows (segment id i at row i - 1; rows past N stay zero), filled by scatters: no host sync.
    row = torch.where(creates, creator_id - 1, p)  # non-creating positions -> a spare row P, dropped
    segment_class = torch.zeros(p + 1, dtype=torch.long, device=device).scatter(0, row, cur_labels)[:p]
    segment_is_thing = torch.zeros(p + 1, dtype=torch.bool, device=device).scatter(0, row, cur_thing)[:p]
    segment_area = torch.zeros(p + 1, dtype=torch.long, device=device).scatter_add(
        0, seg_of_pos, inter_area * valid)[1:]
    segment_score = torch.zeros(p + 1, dtype=scores.dtype, device=device).scatter_reduce(
        0, seg_of_pos, torch.where(valid, cur_scores, torch.zeros_like(cur_scores)), reduce="amax")[1:]
    merged = PanopticMergeOutput(panoptic, segment_class, segment_score, segment_is_thing, segment_area,
                                 query_segment, creates.sum())
    return merged if padded else merged.trimmed()


def _count(ids: Tensor, size: int, where: Optional[Tensor] = None) -> Tensor:
    """`bincount(ids, minlength=size)` (of the `where` entries) without the host sync CUDA's bincount makes to find
    its length; ids < size."""
    ones = torch.ones_like(ids) if where is None else where.long()
    return torch.zeros(size, dtype=torch.long, device=ids.device).scatter_add(0, ids, ones)


def _kept_argmax(masks_flat: Tensor, kept_idx: Tensor, kept_scores: Tensor, chunk_pixels: Optional[int],
                 offset: Optional[Tensor] = None):
    """Per pixel, the first kept query maximising `score * mask` (torch.argmax: first index on ties), whether that
    query's mask is >= 0.5 there, and each kept query's `>= 0.5` area. `offset` [P] is added to the products (0 for
    kept queries, so their values and ties are unchanged; negative for dropped ones).

    Works on [pixels, P] blocks: a reduction along the contiguous last axis is several times faster on CPU than
    `argmax(0)` over a [P, H*W] tensor, and a block stays in cache. The products are the same floats either way.
    """
    p = kept_idx.shape[0]
    hw = masks_flat.shape[1]
    if chunk_pixels is None:
        chunk_pixels = hw if masks_flat.device.type != "cpu" else max(1024, (1 << 20) // max(p, 1))
    ids = torch.empty(hw, dtype=torch.long, device=masks_flat.device)
    hit = torch.empty(hw, dtype=torch.bool, device=masks_flat.device)
    original_area = torch.zeros(p, dtype=torch.long, device=masks_flat.device)
    all_kept = p == masks_flat.shape[0]
    for start in range(0, hw, chunk_pixels):
        n = min(chunk_pixels, hw - start)
        block = masks_flat.narrow(1, start, n)
        if not all_kept:
            block = block.index_select(0, kept_idx)
        block = block.t().contiguous()  # [n, P]
        products = block * kept_scores
        if offset is not None:
            products = products + offset
        winner = products.max(1).indices  # first index on ties, like argmax
        above = block >= 0.5
        ids[start:start + n] = winner
        hit[start:start + n] = above.gather(1, winner.unsqueeze(1)).squeeze(1)
        original_area += above.view(torch.uint8).sum(0, dtype=torch.int32)
    return ids, hit, original_area


def semantic_map(panoptic: Tensor, segment_class: Tensor, void_id: int) -> Tensor:
    """[H, W] int32 class index per pixel from a panoptic map; `void_id` where the id is 0."""
    _check(panoptic, "panoptic", 2)
    _check(segment_class, "segment_class", 1)
    lut = F.pad(segment_class.long(), (1, 0), value=int(void_id))  # no per-frame upload of the void id
    return lut[panoptic.long()].to(torch.int32)


def masks_for_merge(mask_probs: Tensor, output_hw: Sequence[int]) -> Tensor:
    """The `[B, Q, h, w]` generator-frame mask probabilities at the resolution the merge should run at.

    MaskCLIP++ (like Mask2Former's `sem_seg_postprocess_before_inference`) resizes the soft masks bilinearly to the
    original image before the merge, so areas, the overlap test and ties are decided there: done here whenever the
    output is no larger than the generator frame. A larger output (a 4K camera with a 640 px generator) would cost
    Q full-resolution masks (100 x 3840 x 2160 floats = 3.3 GB); then the merge stays on the generator frame and
    `panoptic_at_size` resizes the id map instead.
    """
    _check(mask_probs, "mask_probs", 4)
    h, w = int(output_hw[0]), int(output_hw[1])
    frame_h, frame_w = mask_probs.shape[-2:]
    if (h, w) == (frame_h, frame_w) or h * w > frame_h * frame_w:
        return mask_probs
    return torch.nn.functional.interpolate(mask_probs, size=(h, w), mode="bilinear", align_corners=False)


def panoptic_at_size(merge: "PanopticMergeOutput", size_hw: Sequence[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """The merged id map resized (nearest) to `size_hw`, with each segment's area and xywh box measured there.

    The merge runs on the generator frame; resizing the id map, not Q soft masks, keeps the output size free.
    """
    panoptic = merge.panoptic
    if tuple(panoptic.shape) != tuple(size_hw):
        panoptic = torch.nn.functional.interpolate(panoptic[None, None].float(), size=tuple(size_hw),
                                                   mode="nearest")[0, 0].to(torch.int32)
    num_segments = merge.num_segments
    areas = _count(panoptic.flatten().long(), num_segments + 1)[1:]
    return panoptic, areas, segment_boxes(panoptic, num_segments)


def semantic_probs(mask_probs: Tensor, class_probs: Tensor) -> Tensor:
    """[K, H, W] semantic scores `sum_q p(q, k) * m_q` over non-void classes (Mask2Former `semantic_inference`)."""
    _check(mask_probs, "mask_probs", 3)
    _check(class_probs, "class_probs", 2)
    q, h, w = mask_probs.shape
    if class_probs.shape[0] != q:
        raise ValueError(f"class_probs has {class_probs.shape[0]} queries, mask_probs has {q}")
    cls = class_probs[:, :-1].to(mask_probs.dtype)
    return (cls.transpose(0, 1) @ mask_probs.reshape(q, h * w)).view(-1, h, w)


def semantic_inference(mask_probs: Tensor, class_probs: Tensor, chunk_pixels: Optional[int] = None) -> Tensor:
    """[H, W] int64 `argmax_k sum_q softmax(log(p + 1e-8))[q, k] * m_q` over the K non-void classes: MaskCLIP++'s
    `_semantic_inference` (maskclippp.py) on its void-augmented class logits `log([p (1 - p_void), p_void] + 1e-8)`,
    then detectron2 `SemSegEvaluator`'s argmax.

    `mask_probs` [Q, H, W] at the output size (MaskCLIP++ resizes the soft masks bilinearly first);
    `class_probs` [Q, K + 1] with the void column last. The [K, H, W] score volume is never held whole: pixels are
    scored in blocks of `chunk_pixels` (None: about 16 MB of scores per block), so ADE-847 at full size stays small.
    """
    _check(mask_probs, "mask_probs", 3)
    _check(class_probs, "class_probs", 2)
    q, h, w = mask_probs.shape
    if class_probs.shape[0] != q:
        raise ValueError(f"class_probs has {class_probs.shape[0]} queries, mask_probs has {q}")
    k = class_probs.shape[1] - 1
    cls = torch.log(class_probs.float() + 1e-8).softmax(-1)[:, :k].to(mask_probs.dtype)  # [Q, K]
    masks = mask_probs.reshape(q, h * w)
    if chunk_pixels is None:
        chunk_pixels = max(1024, (4 << 20) // max(k, 1))
    out = torch.empty(h * w, dtype=torch.long, device=mask_probs.device)
    for start in range(0, h * w, chunk_pixels):
        n = min(chunk_pixels, h * w - start)
        out[start:start + n] = (masks.narrow(1, start, n).t() @ cls).argmax(1)  # [n, K] -> first max on ties
    return out.view(h, w)


def instance_inference(mask_probs: Tensor, class_probs: Tensor, is_thing: BoolLike,
                       topk: int = 100) -> Tuple[Tensor, Tensor, Tensor]:
    """Instance predictions as MaskCLIP++'s `_instance_inference` with panoptic on (maskclippp.py): the top `topk`
    (detectron2 `TEST.DETECTIONS_PER_IMAGE`, 100) of all (query, class) pairs by `softmax(log(p + 1e-8))[q, k]` over
    the K non-void classes, kept when the class is a thing; mask `m_q > 0.5`; score = class score x the mean of `m_q`
    inside the mask.

    `mask_probs` [Q, H, W] at the output size; `class_probs` [Q, K + 1]. Returns scores [N] float, classes [N] long
    and masks [N, H, W] bool, by decreasing class score (the reference's `topk(sorted=False)` order is unspecified;
    COCOeval sorts by score).
    """
    _check(mask_probs, "mask_probs", 3)
    _check(class_probs, "class_probs", 2)
    q = mask_probs.shape[0]
    if class_probs.shape[0] != q:
        raise ValueError(f"class_probs has {class_probs.shape[0]} queries, mask_probs has {q}")
    k = class_probs.shape[1] - 1
    thing = _as_bool(is_thing, "is_thing", k, mask_probs.device)
    scores = torch.log(class_probs.to(mask_probs.dtype) + 1e-8).softmax(-1)[:, :k]
    n = min(int(topk), scores.numel())
    top_scores, top_index = scores.flatten().topk(n, sorted=True)
    labels = top_index % k
    queries = torch.div(top_index, k, rounding_mode="trunc")
    keep = thing.index_select(0, labels)
    top_scores, labels, queries = top_scores[keep], labels[keep], queries[keep]
    masks = mask_probs.index_select(0, queries)
    binary = masks > 0.5
    flat = binary.flatten(1).to(masks.dtype)
    mask_scores = (masks.flatten(1) * flat).sum(1) / (flat.sum(1) + 1e-6)
    return top_scores * mask_scores, labels, binary


def segment_boxes(panoptic: Tensor, num_segments: int) -> Tensor:
    """[N, 4] int64 boxes `(x_min, y_min, width, height)`, inclusive (one pixel -> width 1), for ids 1..N.

    Rows and columns are reduced separately (a segment occupies a row if any of its pixels is there), so the cost is
    one `[N+1, H]` and one `[N+1, W]` occupancy table, not a per-segment scan. Absent ids get (0, 0, 0, 0).
    """
    _check(panoptic, "panoptic", 2)
    h, w = panoptic.shape
    device = panoptic.device
    n1 = num_segments + 1
    ids = panoptic.long().clamp(0, num_segments)
    # occupancy per (segment, row) and (segment, column): scatter a 1 at id * H + y (resp. id * W + x)
    rows = torch.zeros(n1 * h, dtype=torch.bool, device=device)
    rows[(ids * h + torch.arange(h, device=device).view(h, 1)).view(-1)] = True
    cols = torch.zeros(n1 * w, dtype=torch.bool, device=device)
    cols[(ids * w + torch.arange(w, device=device).view(1, w)).view(-1)] = True
    rows = rows.view(n1, h)[1:]
    cols = cols.view(n1, w)[1:]

    def first_last(occ: Tensor, size: int):
        ar = torch.arange(size, device=device)
        lo = torch.where(occ, ar, size).amin(1)
        hi = torch.where(occ, ar, -1).amax(1)
        return lo, hi

    y0, y1 = first_last(rows, h)
    x0, x1 = first_last(cols, w)
    present = y1 >= 0
    boxes = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)
    return torch.where(present.unsqueeze(1), boxes, torch.zeros_like(boxes))


def build_segments(
    segment_class: Tensor,
    segment_score: Tensor,
    segment_is_thing: Tensor,
    segment_area: Tensor,
    segment_boxes: Tensor,
    labels: Sequence[str],
) -> List[SegmentInfo]:
    """Segment table as `SegmentInfo` for ids 1..N: one host transfer per array, then plain Python.

    Arrays are [N] (boxes [N, 4] xywh from `segment_boxes`); areas and boxes are passed separately because a caller
    that resizes the panoptic map recomputes them at the output size. `PanopticMergeOutput.segments` is the shortcut.
    """
    n = int(segment_class.shape[0])
    for name, t in (("segment_score", segment_score), ("segment_is_thing", segment_is_thing),
                    ("segment_area", segment_area)):
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    if tuple(segment_boxes.shape) != (n, 4):
        raise ValueError(f"segment_boxes must have shape [{n}, 4], got {tuple(segment_boxes.shape)}")
    classes = segment_class.tolist()
    scores = segment_score.tolist()
    things = segment_is_thing.tolist()
    areas = segment_area.tolist()
    boxes = segment_boxes.tolist()
    return [
        SegmentInfo(id=i + 1, class_index=c, label=labels[c], score=float(s), is_thing=bool(t), area=int(a),
                    bbox_xywh=tuple(int(v) for v in b))
        for i, (c, s, t, a, b) in enumerate(zip(classes, scores, things, areas, boxes))
    ]
