"""What the node publishes, built from a `PanopticResult`: JSON tables, class/confidence images and vision_msgs
messages. Pure functions (message classes are passed in or imported lazily) so the tests can check each one.

Pixel values: `class_value(index, void) = index + (1 if void == 0 else 0)`; ~/labels, ~/label_info, ~/segments and
~/detections all state the same mapping as ~/semantic.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

from ovs_ros.node.params import MAX_MONO8_CLASSES, MAX_SEMANTIC_CLASSES
from ovs_ros.results import SEGMENTS_SCHEMA_VERSION

LABELS_SCHEMA_VERSION = 1


def _stamp_dict(stamp: Any) -> dict:
    return {"sec": int(stamp.sec), "nanosec": int(stamp.nanosec)}


def value_offset(semantic_void_value: int) -> int:
    """0 when void is the maximum value (vision_msgs convention), 1 when void is 0 (Nav2 / opennav)."""
    return 1 if semantic_void_value == 0 else 0


def void_pixel(semantic_void_value: int, encoding: str) -> int:
    """The void pixel in `encoding`: 0, or the type's maximum (65535 in 16UC1, 255 in mono8)."""
    if semantic_void_value == 0:
        return 0
    return 255 if encoding == "mono8" else int(semantic_void_value)


def max_classes_for(encoding: str) -> int:
    return MAX_MONO8_CLASSES if encoding == "mono8" else MAX_SEMANTIC_CLASSES


def segments_json(result: Any, header: Any, semantic_void_value: int) -> str:
    """The ~/segments payload (docs/ros_interface.md, schema `ovs_ros/segments` v`SEGMENTS_SCHEMA_VERSION`)."""
    offset = value_offset(semantic_void_value)
    height, width = result.panoptic.shape[:2]
    return json.dumps({
        "schema": "ovs_ros/segments",
        "schema_version": SEGMENTS_SCHEMA_VERSION,
        "stamp": _stamp_dict(header.stamp),
        "frame_id": header.frame_id,
        "width": int(width),
        "height": int(height),
        "vocabulary_version": int(result.vocabulary_version),
        "semantic_void_value": int(semantic_void_value),
        "segments": [{
            "id": int(s.id),
            "label": s.label,
            "class_index": int(s.class_index),
            "semantic_value": int(s.class_index) + offset,
            "score": round(float(s.score), 5),
            "is_thing": bool(s.is_thing),
            "area": int(s.area),
            "bbox_xywh": [int(v) for v in s.bbox_xywh],
        } for s in result.segments],
    }, separators=(",", ":"))


def labels_json(vocabulary: Any, version: int, template_set: str, semantic_void_value: int, stamp: Any,
                semantic_encoding: str = "16UC1") -> str:
    """The ~/labels payload: class index -> name, synonyms, stuff flag, and the ~/semantic pixel value."""
    offset = value_offset(semantic_void_value)
    return json.dumps({
        "schema": "ovs_ros/labels",
        "schema_version": LABELS_SCHEMA_VERSION,
        "stamp": _stamp_dict(stamp),
        "vocabulary_version": int(version),
        "template_set": template_set,
        "semantic_void_value": int(semantic_void_value),
        "semantic_offset": offset,
        "semantic_encoding": semantic_encoding,
        "semantic_void_pixel": void_pixel(semantic_void_value, semantic_encoding),
        "classes": [{
            "class_index": i,
            "semantic_value": i + offset,
            "name": entry.names[0],
            "synonyms": list(entry.names),
            "is_stuff": bool(entry.is_stuff),
        } for i, entry in enumerate(vocabulary.entries)],
    }, separators=(",", ":"))


def semantic_image(result: Any, semantic_void_value: int, encoding: str = "16UC1") -> np.ndarray:
    """[H, W] class values (uint16 for 16UC1, uint8 for mono8): class index (+1 when void is 0), the void pixel
    where no segment. Classes that do not fit the encoding are void (the node refuses such vocabularies)."""
    sem = np.asarray(result.semantic)
    dtype = np.uint8 if encoding == "mono8" else np.uint16
    out = np.full(sem.shape, void_pixel(semantic_void_value, encoding), dtype=dtype)
    valid = (sem >= 0) & (sem != result.void_class_id) & (sem < max_classes_for(encoding))
    out[valid] = (sem[valid] + value_offset(semantic_void_value)).astype(dtype)
    return out


def confidence_image(result: Any) -> np.ndarray:
    """[H, W] uint8: the score of the pixel's segment x 255 (rounded), 0 where void (the Nav2 layer's confidence)."""
    panoptic = np.asarray(result.panoptic)
    top = max([int(s.id) for s in result.segments] + [0])
    lut = np.zeros(top + 1, dtype=np.uint8)
    for s in result.segments:
        lut[int(s.id)] = int(round(min(max(float(s.score), 0.0), 1.0) * 255.0))
    ids = np.clip(panoptic, 0, top)
    return lut[ids]


def load_vision_msgs() -> Optional[Any]:
    """The vision_msgs.msg module, or None where it is not installed (pip installs without the interface build)."""
    try:
        import vision_msgs.msg as vision_msgs
    except ImportError:
        return None
    return vision_msgs


def label_info_msg(vision_msgs: Any, vocabulary: Any, semantic_void_value: int, threshold: float,
                   header: Any) -> Any:
    """vision_msgs/LabelInfo: class_id = the ~/semantic pixel value, class_name = the label; void is not listed
    (a consumer maps unknown values to nothing, as the Nav2 layer does)."""
    offset = value_offset(semantic_void_value)
    msg = vision_msgs.LabelInfo()
    msg.header = header
    msg.class_map = [vision_msgs.VisionClass(class_id=i + offset, class_name=label)
                     for i, label in enumerate(vocabulary.labels)]
    msg.threshold = float(threshold)
    return msg


def detections_msg(vision_msgs: Any, result: Any, header: Any, semantic_void_value: int) -> Any:
    """vision_msgs/Detection2DArray: one Detection2D per thing segment. `id` = the segment id in ~/panoptic,
    class_id = the ~/semantic pixel value (as a string, per vision_msgs), score = the segment score; the box centre
    and size are in pixels with pixel i covering [i, i + 1)."""
    offset = value_offset(semantic_void_value)
    array = vision_msgs.Detection2DArray()
    array.header = header
    for s in result.segments:
        if not s.is_thing:
            continue
        x, y, w, h = (float(v) for v in s.bbox_xywh)
        det = vision_msgs.Detection2D()
        det.header = header
        det.id = str(int(s.id))
        det.bbox.center.position.x = x + w / 2.0
        det.bbox.center.position.y = y + h / 2.0
        det.bbox.center.theta = 0.0
        det.bbox.size_x = w
        det.bbox.size_y = h
        hypothesis = vision_msgs.ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(int(s.class_index) + offset)
        hypothesis.hypothesis.score = float(s.score)
        det.results = [hypothesis]
        array.detections.append(det)
    return array
