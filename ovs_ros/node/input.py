"""The node's camera input: topic names as image_transport builds them, a QoS that matches the camera, and the
subscription's life (re-made when the publishers change), plus the camera_info pass-through's input.

Why `auto` reliability: a reliable subscription cannot connect to a best-effort publisher, and a best-effort one
connected to a reliable camera loses every sample above ~0.5 MB on default Fast DDS transports (a 640x480 rgb8 frame
is 922 KB). Matching the publishers gives each camera the QoS that delivers its frames.
"""
from __future__ import annotations

import posixpath
from typing import Any, Callable, List, Optional

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image


def make_qos(reliability: str, depth: int, transient_local: bool = False) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE,
    )


def _remapped_or(node: Any, name: str, fallback: str) -> str:
    """`name` resolved when a remap rule names it, else `fallback` (image_transport derives sibling topics)."""
    resolved = node.resolve_topic_name(name)
    return resolved if resolved != node.resolve_topic_name(name, only_expand=True) else fallback


def input_topic(node: Any, mode: str) -> str:
    """`image`, or for compressed input `<image>/compressed` (so `-r image:=/cam/image_raw` moves both), unless
    `image/compressed` itself is remapped."""
    image = node.resolve_topic_name("image")
    if mode != "compressed":
        return image
    return _remapped_or(node, "image/compressed", image + "/compressed")


def camera_info_topic(node: Any) -> str:
    """The image topic's `camera_info` sibling (`/cam/color/image_raw` -> `/cam/color/camera_info`), unless
    `camera_info` is remapped."""
    image = node.resolve_topic_name("image")
    return _remapped_or(node, "camera_info", posixpath.join(posixpath.dirname(image) or "/", "camera_info"))


def reliability_for(publisher_reliabilities: List[str]) -> str:
    """auto: reliable when every publisher is reliable; best_effort when any is not, or while there is none
    (best_effort connects to both kinds)."""
    if publisher_reliabilities and all(r == "reliable" for r in publisher_reliabilities):
        return "reliable"
    return "best_effort"


class InputSubscription:
    """Subscribes `image` or `<image>/compressed` with the configured or matched reliability.

    `on_message(msg, compressed, info)` gets each frame with rclpy's message info (publication sequence numbers).
    """

    def __init__(self, node: Any, mode: str, reliability: str, depth: int,
                 on_message: Callable[[Any, bool, Optional[dict]], None], callback_group: Any, log: Any) -> None:
        self._node = node
        self.mode = mode
        self.requested = reliability  # auto | reliable | best_effort
        self.depth = depth
        self._on_message = on_message
        self._group = callback_group
        self._log = log
        self.topic = input_topic(node, mode)
        self.in_use: Optional[str] = None  # the reliability of the live subscription
        self._sub: Any = None
        self._camera_info_sub: Any = None
        self.camera_info: Optional[CameraInfo] = None
        self.resubscriptions = 0

    # ------------------------------------------------------------------ publishers
    def publisher_reliabilities(self) -> List[str]:
        infos = self._node.get_publishers_info_by_topic(self.topic)
        return ["reliable" if i.qos_profile.reliability == ReliabilityPolicy.RELIABLE else "best_effort"
                for i in infos]

    def publisher_count(self) -> int:
        return self._sub.get_publisher_count() if self._sub is not None else 0

    def _wanted(self) -> str:
        return reliability_for(self.publisher_reliabilities()) if self.requested == "auto" else self.requested

    # ------------------------------------------------------------------ life
    def start(self, with_camera_info: bool) -> None:
        self._subscribe(self._wanted())
        if with_camera_info and self._camera_info_sub is None:
            topic = camera_info_topic(self._node)
            self._camera_info_sub = self._node.create_subscription(
                CameraInfo, topic, self._on_camera_info, make_qos("best_effort", 1), callback_group=self._group)

    def stop(self) -> None:
        for attr in ("_sub", "_camera_info_sub"):
            sub = getattr(self, attr)
            if sub is not None:
                self._node.destroy_subscription(sub)
                setattr(self, attr, None)
        self.in_use = None

    def recheck(self) -> bool:
        """auto: re-subscribe when the publishers now want another reliability. True when it did."""
        if self._sub is None or self.requested != "auto":
            return False
        wanted = self._wanted()
        if wanted == self.in_use:
            return False
        previous = self.in_use
        self._node.destroy_subscription(self._sub)
        self._sub = None
        self._subscribe(wanted)
        self.resubscriptions += 1
        self._log.info(f"input QoS re-matched to the publishers of {self.topic}: {previous} -> {wanted}")
        return True

    def _subscribe(self, reliability: str) -> None:
        qos = make_qos(reliability, self.depth)
        if self.mode == "compressed":
            self._sub = self._node.create_subscription(CompressedImage, self.topic, self._on_compressed, qos,
                                                       callback_group=self._group)
        else:
            self._sub = self._node.create_subscription(Image, self.topic, self._on_image, qos,
                                                       callback_group=self._group)
        self.in_use = reliability

    def describe(self) -> str:
        why = " (auto: matched to the publishers)" if self.requested == "auto" else ""
        return f"{self.topic} ({self.in_use}{why}, depth {self.depth})"

    # ------------------------------------------------------------------ callbacks (two arguments: rclpy then
    # passes the message info, with the publication sequence number)
    def _on_image(self, msg: Image, info: dict) -> None:
        self._on_message(msg, False, info)

    def _on_compressed(self, msg: CompressedImage, info: dict) -> None:
        self._on_message(msg, True, info)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info = msg
