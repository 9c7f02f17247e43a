"""`ovs-replay`: publish camera frames from a folder of images, a video file or a bag, at a chosen rate, looping.

Bags are read in pure Python, no ROS installation needed: rosbag2 folders (sqlite3 or MCAP storage) through
`rosbags`, single `.mcap` files through `mcap-ros2-support` (only the ROS 2 image channels are decoded: a file may
also hold JSON, protobuf or other channels). Image and CompressedImage messages are decoded with the same checks as
the node (ovs_ros/image_codec.py) and re-published with a fresh stamp (or the recorded one with `--stamp original`,
shifted on every loop so it never goes back), so the node's latency numbers stay meaningful.

    ovs-replay ~/bags/kitchen --topic /camera/image_raw --rate 15
    ovs-replay frames/ --rate 5 --compressed jpeg            # publishes /image/compressed
    ovs-replay clip.mp4 --no-loop --max-frames 300 --ros-args -r __ns:=/robot1
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ovs_ros.image_codec import ImageDecodeError, compressed_msg_to_rgb, image_msg_to_rgb, rgb_to_compressed_bytes
from ovs_ros.ros_session import ForcedShutdown, ros_args_errors, ros_session

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
# (rgb, recorded stamp (sec, nanosec) or None, recorded frame_id or None)
Frame = Tuple[np.ndarray, Optional[Tuple[int, int]], Optional[str]]


class ReplayError(RuntimeError):
    """The source cannot be replayed (missing, empty, no image topic, ...)."""


def _decode_message(msgtype: str, msg: Any, max_pixels: int) -> np.ndarray:
    if msgtype.endswith("CompressedImage"):
        return compressed_msg_to_rgb(msg, max_pixels)
    return image_msg_to_rgb(msg, max_pixels)


def _mcap_image_type(schema: Any, channel: Any) -> Optional[str]:
    """The sensor_msgs type of an MCAP channel that mcap-ros2-support can decode (CDR messages, `ros2msg` schema),
    or None for anything else (JSON, protobuf, other ROS types)."""
    if schema is None or channel.message_encoding != "cdr" or schema.encoding != "ros2msg":
        return None
    name = schema.name if "/msg/" in schema.name else schema.name.replace("sensor_msgs/", "sensor_msgs/msg/")
    return name if name in IMAGE_TYPES else None


def _header(msg: Any) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    header = getattr(msg, "header", None)
    if header is None:
        return None, None
    return (int(header.stamp.sec), int(header.stamp.nanosec)), str(header.frame_id)


class FrameSource:
    """Iterates the frames of one source; `frames()` can be called again to loop."""

    def __init__(self, path: Path, bag_topic: Optional[str] = None, max_pixels: int = 4096 * 4096) -> None:
        self.path = Path(path).expanduser()
        self.bag_topic = bag_topic
        self.max_pixels = max_pixels
        self.skipped = 0
        if not self.path.exists():
            raise ReplayError(f"{self.path}: no such file or folder")
        if self.path.is_dir() and (self.path / "metadata.yaml").is_file():
            self.kind = "rosbag2"
        elif self.path.suffix == ".db3" and (self.path.parent / "metadata.yaml").is_file():
            self.path, self.kind = self.path.parent, "rosbag2"
        elif self.path.suffix == ".mcap" and (self.path.parent / "metadata.yaml").is_file():
            self.path, self.kind = self.path.parent, "rosbag2"
        elif self.path.suffix == ".mcap":
            self.kind = "mcap"
        elif self.path.is_dir():
            self.kind = "folder"
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise ReplayError(f"{self.path}: no images ({', '.join(IMAGE_SUFFIXES)})")
        else:
            self.kind = "video"

    def describe(self) -> str:
        topic = f", topic {self.bag_topic}" if self.bag_topic else ""
        return f"{self.kind} {self.path}{topic}"

    def frames(self) -> Iterator[Frame]:
        return getattr(self, f"_{self.kind}")()

    # ------------------------------------------------------------------ readers
    def _folder(self) -> Iterator[Frame]:
        import cv2

        for path in self.files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                self._skip(f"{path}: OpenCV cannot read it")
                continue
            yield np.ascontiguousarray(bgr[:, :, ::-1]), None, None

    def _video(self) -> Iterator[Frame]:
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise ReplayError(f"{self.path}: OpenCV cannot open it as a video")
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield np.ascontiguousarray(bgr[:, :, ::-1]), None, None
        finally:
            capture.release()

    def _rosbag2(self) -> Iterator[Frame]:
        from rosbags.rosbag2 import Reader
        from rosbags.typesys import Stores, get_typestore

        typestore = get_typestore(Stores.LATEST)
        with Reader(self.path) as reader:
            connections = [c for c in reader.connections if c.msgtype in IMAGE_TYPES
                           and (self.bag_topic is None or c.topic == self.bag_topic)]
            if not connections:
                found = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
                raise ReplayError(f"{self.path}: no image topic{' ' + self.bag_topic if self.bag_topic else ''}; "
                                  f"the bag has {found}")
            topics = {c.topic for c in connections}
            if len(topics) > 1:
                raise ReplayError(f"{self.path}: several image topics {sorted(topics)}; pick one with --bag-topic")
            for connection, _timestamp, raw in reader.messages(connections=connections):
                msg = typestore.deserialize_cdr(raw, connection.msgtype)
                yield from self._decoded(connection.msgtype, msg)

    def _mcap(self) -> Iterator[Frame]:
        from mcap.reader import make_reader
        from mcap_ros2.decoder import DecoderFactory

        decoders = DecoderFactory()
        seen_image = False
        with open(self.path, "rb") as f:
            reader = make_reader(f)
            for schema, channel, message in reader.iter_messages(topics=self._mcap_topics(reader)):
                msgtype = _mcap_image_type(schema, channel)
                if msgtype is None or (self.bag_topic and channel.topic != self.bag_topic):
                    continue  # never decoded: only image channels need a decoder
                seen_image = True
                try:
                    msg = decoders.decoder_for(channel.message_encoding, schema)(message.data)
                except Exception as exc:  # a broken message or schema: skip it like an undecodable image
                    self._skip(f"{channel.topic}: cannot decode the message: {type(exc).__name__}: {exc}")
                    continue
                yield from self._decoded(msgtype, msg)
        if not seen_image:
            raise ReplayError(f"{self.path}: no sensor_msgs Image or CompressedImage messages"
                              f"{' on ' + self.bag_topic if self.bag_topic else ''}")

    def _mcap_topics(self, reader: Any) -> Optional[List[str]]:
        """The image topic to read, chosen from the file's summary (like a rosbag2's connections); None when the
        file has no summary (then each message's channel is checked as it comes)."""
        from mcap.exceptions import McapError

        try:
            summary = reader.get_summary()
        except McapError:  # e.g. a recording cut short: no footer
            summary = None
        if summary is None:
            return [self.bag_topic] if self.bag_topic else None
        channels = list(summary.channels.values())
        images = sorted({c.topic for c in channels if _mcap_image_type(summary.schemas.get(c.schema_id), c)
                         and (self.bag_topic is None or c.topic == self.bag_topic)})
        if not images:
            found = sorted({f"{c.topic} ({getattr(summary.schemas.get(c.schema_id), 'name', '?')}, "
                            f"{c.message_encoding})" for c in channels})
            raise ReplayError(f"{self.path}: no ROS 2 image topic{' ' + self.bag_topic if self.bag_topic else ''}; "
                              f"the file has {found}")
        if len(images) > 1:
            raise ReplayError(f"{self.path}: several image topics {images}; pick one with --bag-topic")
        return images

    def _decoded(self, msgtype: str, msg: Any) -> Iterator[Frame]:
        try:
            rgb = _decode_message(msgtype, msg, self.max_pixels)
        except ImageDecodeError as exc:
            self._skip(str(exc))
            return
        stamp, frame_id = _header(msg)
        yield rgb, stamp, frame_id

    def _skip(self, why: str) -> None:
        self.skipped += 1
        if self.skipped <= 5:
            print(f"ovs-replay: skipping a frame: {why}", file=sys.stderr)


class LoopStamps:
    """`--stamp original` while looping: each pass is shifted by the recording's stamp span plus one frame interval,
    so stamps never go back in time (consumers such as TF buffers and message filters drop or reset on that)."""

    def __init__(self, default_gap_ns: int) -> None:
        self.offset_ns = 0
        self._default_gap_ns = max(int(default_gap_ns), 1)
        self._first: Optional[int] = None
        self._last: Optional[int] = None
        self._count = 0

    def shift(self, stamp: Tuple[int, int]) -> Tuple[int, int]:
        """The recorded (sec, nanosec) plus this pass's offset."""
        ns = int(stamp[0]) * 1_000_000_000 + int(stamp[1])
        self._first = ns if self._first is None else min(self._first, ns)
        self._last = ns if self._last is None else max(self._last, ns)
        self._count += 1
        sec, nanosec = divmod(ns + self.offset_ns, 1_000_000_000)
        return sec, nanosec

    def next_pass(self) -> None:
        if self._count == 0 or self._first is None or self._last is None:
            return
        span = self._last - self._first
        gap = span // (self._count - 1) if self._count > 1 and span > 0 else self._default_gap_ns
        self.offset_ns += span + max(gap, 1)
        self._first = self._last = None
        self._count = 0


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ovs-replay",
        description="Publish images from a folder, a video file, a rosbag2 folder (sqlite3/MCAP) or an .mcap file.",
        epilog="ROS arguments (remaps, namespace) go after --ros-args.")
    parser.add_argument("source", type=Path, help="image folder, video file, rosbag2 folder or .mcap file")
    parser.add_argument("--topic", default="image", help="output topic (default: image, relative)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="frames per second (default 10; 0 = as fast as possible)")
    parser.add_argument("--loop", action=argparse.BooleanOptionalAction, default=True,
                        help="start over at the end (default: on)")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = no limit)")
    parser.add_argument("--compressed", nargs="?", const="jpeg", choices=("jpeg", "png"), default=None,
                        help="publish sensor_msgs/CompressedImage on <topic>/compressed (jpeg unless png is given)")
    parser.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8", help="raw output encoding")
    parser.add_argument("--bag-topic", default=None, help="image topic to read from a bag with several")
    parser.add_argument("--frame-id", default=None, help="header.frame_id (default: the recorded one, else 'camera')")
    parser.add_argument("--stamp", choices=("now", "original"), default="now",
                        help="header.stamp: time of publishing (default) or the recorded one")
    parser.add_argument("--resize", default=None, metavar="WxH", help="resize every frame, e.g. 640x480")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable",
                        help="publisher QoS (reliable reaches both kinds of subscribers)")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                        help="wait (up to --wait-timeout s) for N subscribers before the first frame")
    parser.add_argument("--wait-timeout", type=float, default=30.0)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(list(argv))
    if args.rate < 0:
        parser.error("--rate must be >= 0")
    if args.resize:
        try:
            w, h = (int(v) for v in args.resize.lower().split("x"))
            if w <= 0 or h <= 0:
                raise ValueError
            args.resize = (w, h)
        except ValueError:
            parser.error(f"--resize must be WIDTHxHEIGHT, got {args.resize!r}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    from rclpy.utilities import remove_ros_args

    try:
        args = _parse(remove_ros_args(argv)[1:])
    except ros_args_errors() as exc:
        print(f"ovs-replay: unusable --ros-args: {exc}", file=sys.stderr)
        return 2
    try:
        source = FrameSource(args.source, args.bag_topic)
    except ReplayError as exc:
        print(f"ovs-replay: {exc}", file=sys.stderr)
        return 2

    with ros_session(argv) as stop:
        try:
            return _publish_frames(args, source, stop)
        except ForcedShutdown as exc:  # a second signal, e.g. while a large bag is being read
            print(f"ovs-replay: {exc}: stopped", file=sys.stderr)
            return exc.exit_code


def _publish_frames(args: argparse.Namespace, source: "FrameSource", stop: threading.Event) -> int:
    """Publish `source` as the arguments say until it ends, `--max-frames` or a signal; the exit code."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    node = rclpy.create_node("ovs_replay")
    log = node.get_logger()
    code = 0
    published = 0
    try:
        from sensor_msgs.msg import CompressedImage, Image

        from ovs_ros.image_codec import fill_image_msg

        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if args.reliability == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT)
        topic = f"{args.topic.rstrip('/')}/compressed" if args.compressed else args.topic
        pub = node.create_publisher(CompressedImage if args.compressed else Image, topic, qos)
        if args.wait_subscribers > 0:
            deadline = time.monotonic() + args.wait_timeout
            while pub.get_subscription_count() < args.wait_subscribers and time.monotonic() < deadline:
                if stop.wait(0.05):
                    break
        log.info(f"replaying {source.describe()} on {pub.topic_name} at "
                 f"{args.rate:g} fps{' (looping)' if args.loop else ''}")
        period = 1.0 / args.rate if args.rate > 0 else 0.0
        stamps = LoopStamps(int(period * 1e9) if period else 1_000_000)
        next_t = time.monotonic()
        passes = 0
        while not stop.is_set():
            count_this_pass = 0
            for rgb, stamp, frame_id in source.frames():
                if stop.is_set() or (args.max_frames and published >= args.max_frames):
                    break
                if args.resize:
                    import cv2

                    rgb = cv2.resize(rgb, args.resize, interpolation=cv2.INTER_AREA)
                if args.compressed:
                    msg = CompressedImage(format=args.compressed, data=rgb_to_compressed_bytes(rgb, args.compressed))
                else:
                    msg = fill_image_msg(Image(), rgb if args.encoding == "rgb8"
                                         else np.ascontiguousarray(rgb[:, :, ::-1]), args.encoding)
                msg.header.frame_id = args.frame_id or frame_id or "camera"
                if period:
                    delay = next_t - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    # Fixed-rate schedule; after a stall (slow decode) restart it instead of bursting to catch up.
                    next_t = max(next_t + period, time.monotonic())
                if args.stamp == "original" and stamp is not None:
                    msg.header.stamp.sec, msg.header.stamp.nanosec = stamps.shift(stamp)
                else:
                    msg.header.stamp = node.get_clock().now().to_msg()
                pub.publish(msg)
                published += 1
                count_this_pass += 1
            passes += 1
            stamps.next_pass()
            if count_this_pass == 0:
                if passes == 1 and not stop.is_set() and not args.max_frames:
                    log.error(f"{source.describe()}: no frame could be read")
                    code = 2
                break
            if not args.loop or (args.max_frames and published >= args.max_frames):
                break
            if not args.quiet:
                log.info(f"pass {passes} done ({published} frames published); looping")
        time.sleep(0.2)  # let the last reliable messages go out
    except ReplayError as exc:
        log.error(str(exc))
        code = 2
    finally:
        if source.skipped:
            log.warning(f"{source.skipped} unreadable frames skipped")
        log.info(f"published {published} frames")
        node.destroy_node()
    return code


if __name__ == "__main__":
    sys.exit(main())
