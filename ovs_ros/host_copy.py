"""A frame's one copy from the device to the host: the id image, the class image and the segment table packed into one
int32 tensor, copied once, unpacked with numpy.

Why one copy: every device-to-host read waits for the device; done once, at the end, the GPU runs the whole frame
without the host stopping it (test/test_sync_audit.py counts the rest). The segment tables come padded to a fixed
number of rows (`panoptic_merge(padded=True)`) with the segment count on the device, so not even N is read early.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ovs_ros.postprocess import PanopticMergeOutput
from ovs_ros.results import SegmentInfo


def frame_to_host(
    panoptic: Tensor,
    semantic: Tensor,
    merged: PanopticMergeOutput,
    areas: Tensor,
    boxes: Tensor,
    labels: Sequence[str],
    extras: Sequence[Optional[Tensor]] = (),
) -> Tuple[np.ndarray, np.ndarray, List[SegmentInfo], List[Optional[np.ndarray]]]:
    """-> (panoptic [H, W] int32, semantic [H, W] int32, segments, extras as numpy).

    `areas` [P] and `boxes` [P, 4] are measured on the output id map (`panoptic_at_size`); rows past the segment
    count are padding. `extras` (evaluation-only outputs) are copied after the packed tensor, each on its own.
    """
    height, width = panoptic.shape
    rows = merged.num_segments
    count = merged.num_valid if merged.num_valid is not None else torch.tensor(rows, device=panoptic.device)
    packed = torch.cat([
        count.reshape(1).to(torch.int32),
        panoptic.reshape(-1).to(torch.int32),
        semantic.reshape(-1).to(torch.int32),
        merged.segment_class.to(torch.int32),
        merged.segment_is_thing.to(torch.int32),
        areas.to(torch.int32),
        merged.segment_score.float().view(torch.int32),
        boxes.reshape(-1).to(torch.int32),
    ])
    host = packed.cpu().numpy()  # the frame's one wait for the device
    n = int(host[0])
    hw = height * width
    offsets = np.cumsum([1, hw, hw, rows, rows, rows, rows])
    panoptic_np = host[offsets[0]:offsets[1]].reshape(height, width)
    semantic_np = host[offsets[1]:offsets[2]].reshape(height, width)
    classes = host[offsets[2]:offsets[2] + n].tolist()
    things = host[offsets[3]:offsets[3] + n].tolist()
    seg_areas = host[offsets[4]:offsets[4] + n].tolist()
    scores = host[offsets[5]:offsets[5] + n].view(np.float32).tolist()
    seg_boxes = host[offsets[6]:].reshape(rows, 4)[:n].tolist()
    segments = [
        SegmentInfo(id=i + 1, class_index=c, label=labels[c], score=float(s), is_thing=bool(t), area=int(a),
                    bbox_xywh=tuple(int(v) for v in b))
        for i, (c, s, t, a, b) in enumerate(zip(classes, scores, things, seg_areas, seg_boxes))
    ]
    return panoptic_np, semantic_np, segments, [None if t is None else t.cpu().numpy() for t in extras]
