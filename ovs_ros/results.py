"""Plain-Python result types shared by the Segmenter, the CLI and the ROS node (no torch, no ROS)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

SEGMENTS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SegmentInfo:
    """One panoptic segment.

    `bbox_xywh` is in pixels of the input image: (x_min, y_min, width, height), inclusive of both edges
    (a one-pixel segment has width 1).
    """

    id: int
    class_index: int
    label: str
    score: float
    is_thing: bool
    area: int
    bbox_xywh: Tuple[int, int, int, int]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox_xywh"] = list(self.bbox_xywh)
        return d


@dataclass
class InstanceResult:
    """Instance predictions for instance AP (MaskCLIP++ `_instance_inference`): N detections, thing classes only.

    scores: [N] float32; classes: [N] int64 vocabulary indices; masks: [N, H, W] bool at the input size.
    """

    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray


@dataclass
class PanopticResult:
    """Output of `Segmenter.segment` for one image.

    panoptic: [H, W] int32 segment ids, 0 = void (no segment).
    semantic: [H, W] int32 class indices into the vocabulary, `void_class_id` where no segment.
    segments: one entry per id > 0 present in `panoptic`, in id order.
    timings_ms: wall-clock milliseconds per stage (preprocess, generator, classifier, ensemble, merge, ...).
    semantic_inference: [H, W] int32 class indices from MaskCLIP++'s soft semantic inference
        (`argmax_k sum_q p(q, k) m_q`, no void), when asked for (`Segmenter.segment(rgb, semantic=True)`); else None.
    instances: top-100 thing detections (`InstanceResult`) when asked for (`segment(rgb, instances=True)`); else None.
    """

    panoptic: np.ndarray
    semantic: np.ndarray
    segments: List[SegmentInfo]
    void_class_id: int
    vocabulary_version: int = 0
    timings_ms: Dict[str, float] = field(default_factory=dict)
    semantic_inference: Optional[np.ndarray] = None
    instances: Optional[InstanceResult] = None

    def segments_table(self) -> List[dict]:
        return [s.to_dict() for s in self.segments]
