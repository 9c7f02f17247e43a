"""The node's publishers and what goes on each: one place that knows topic names, message types and QoS.

Frame outputs (`FRAME_OUTPUTS`, each switchable with `publish_<name>`) are published only while they have a
subscriber; `~/labels` and `~/label_info` are transient local, so a late subscriber gets the class map at once.
vision_msgs outputs exist only when vision_msgs is importable; the JSON topics carry the same content for installs
without it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from ovs_ros.image_codec import to_image_msg
from ovs_ros.node.input import make_qos
from ovs_ros.node.payloads import (
    confidence_image, detections_msg, label_info_msg, labels_json, segments_json, semantic_image)

FRAME_OUTPUTS = ("panoptic", "semantic", "confidence", "segments", "overlay", "detections", "camera_info")
VISION_MSGS_OUTPUTS = ("detections", "label_info")


class OutputPublishers:
    """Creates, feeds and releases the output publishers (lifecycle publishers on a lifecycle node)."""

    def __init__(self, node: Any, reliability: str, depth: int, vision_msgs: Optional[Any], lifecycle: bool) -> None:
        self._node = node
        self._vision_msgs = vision_msgs
        self._lifecycle = lifecycle
        make = node.create_lifecycle_publisher if lifecycle else node.create_publisher
        qos = make_qos(reliability, depth)
        latched = make_qos("reliable", 1, transient_local=True)
        self.pubs: Dict[str, Any] = {
            "panoptic": make(Image, "~/panoptic", qos),
            "semantic": make(Image, "~/semantic", qos),
            "confidence": make(Image, "~/confidence", qos),
            "segments": make(String, "~/segments", qos),
            "overlay": make(Image, "~/overlay", qos),
            "camera_info": make(CameraInfo, "~/camera_info", qos),
            "labels": make(String, "~/labels", latched),
        }
        if vision_msgs is not None:
            self.pubs["detections"] = make(vision_msgs.Detection2DArray, "~/detections", qos)
            self.pubs["label_info"] = make(vision_msgs.LabelInfo, "~/label_info", latched)

    @property
    def has_vision_msgs(self) -> bool:
        return self._vision_msgs is not None

    def wanted(self, enabled: Callable[[str], bool]) -> Tuple[str, ...]:
        """The frame outputs switched on (`enabled(name)`) that have a subscriber right now."""
        return tuple(name for name in FRAME_OUTPUTS if name in self.pubs and enabled(name)
                     and self.pubs[name].get_subscription_count() > 0)

    def publish_frame(self, wanted: Tuple[str, ...], header: Any, result: Any, void_value: int, encoding: str,
                      camera_info: Optional[CameraInfo], overlay: Optional[np.ndarray]) -> None:
        """Publish one result on every output in `wanted` (the caller holds the publish lock)."""
        pubs = self.pubs
        if "panoptic" in wanted:
            pubs["panoptic"].publish(to_image_msg(np.asarray(result.panoptic, dtype=np.int32), "32SC1", header))
        if "semantic" in wanted:
            pubs["semantic"].publish(to_image_msg(semantic_image(result, void_value, encoding), encoding, header))
        if "confidence" in wanted:
            pubs["confidence"].publish(to_image_msg(confidence_image(result), "mono8", header))
        if "segments" in wanted:
            pubs["segments"].publish(String(data=segments_json(result, header, void_value)))
        if "detections" in wanted:
            pubs["detections"].publish(detections_msg(self._vision_msgs, result, header, void_value))
        if "camera_info" in wanted and camera_info is not None:
            info = CameraInfo()
            for field in CameraInfo.get_fields_and_field_types():
                setattr(info, field, getattr(camera_info, field))
            info.header = header  # stamped like the outputs, so 3D consumers can sync and project them
            pubs["camera_info"].publish(info)
        if "overlay" in wanted and overlay is not None:
            pubs["overlay"].publish(to_image_msg(overlay, "rgb8", header))

    def publish_labels(self, vocabulary: Any, version: int, template_set: str, void_value: int, encoding: str,
                       threshold: float, stamp: Any) -> None:
        self.pubs["labels"].publish(String(data=labels_json(vocabulary, version, template_set, void_value, stamp,
                                                            encoding)))
        self.publish_label_info(vocabulary, void_value, threshold, stamp)

    def publish_label_info(self, vocabulary: Any, void_value: int, threshold: float, stamp: Any) -> None:
        pub = self.pubs.get("label_info")
        if pub is None:
            return
        from std_msgs.msg import Header

        pub.publish(label_info_msg(self._vision_msgs, vocabulary, void_value, threshold, Header(stamp=stamp)))

    def release(self, quietly: Callable[[Callable[[Any], Any], Any], None]) -> None:
        """Lifecycle publishers must leave the node's managed entities too, or every cleanup/configure cycle adds
        more that each later transition still visits."""
        destroy = self._node.destroy_lifecycle_publisher if self._lifecycle else self._node.destroy_publisher
        for pub in self.pubs.values():
            quietly(destroy, pub)
        self.pubs = {}
