"""Save what RViz would show: start the node, feed it a real photo, write the first ~/overlay image as a PNG.

    python tools/node_overlay_snapshot.py --out docs/images/node_overlay.png --image astronaut \
        --vocab "person,astronaut" "flag" "rocket" "stuff:wall"

The node runs in its own process (`python -m ovs_ros.node`) on an isolated ROS domain; this script publishes the photo
on `image` a few times per second and subscribes to `~/overlay` and `~/segments`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("node_overlay.png"))
    parser.add_argument("--image", default="astronaut")
    parser.add_argument("--vocab", nargs="*", default=["person,astronaut", "flag", "rocket", "stuff:wall"])
    parser.add_argument("--segmenter-config", default="tiny")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    import cv2
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from ovs_ros.cli import load_image
    from ovs_ros.image_codec import image_msg_to_rgb, to_image_msg

    env = dict(os.environ, ROS_DOMAIN_ID=str(90 + os.getpid() % 10), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    os.environ.update(env)
    vocab = "[" + ", ".join(repr(v) for v in args.vocab) + "]"
    node_cmd = [sys.executable, "-m", "ovs_ros.node", "--ros-args", "--params-file", str(REPO / "config" / "ovs.yaml"),
                "-r", "__ns:=/snapshot", "-p", f"segmenter_config:={args.segmenter_config}",
                "-p", f"vocabulary:={vocab}"]
    node = subprocess.Popen(node_cmd, env=env)
    rclpy.init()
    client = rclpy.create_node("overlay_snapshot")
    received = {}
    client.create_subscription(Image, "/snapshot/ovs/overlay", lambda m: received.setdefault("overlay", m), 1)
    client.create_subscription(String, "/snapshot/ovs/segments", lambda m: received.setdefault("segments", m), 1)
    publisher = client.create_publisher(Image, "/snapshot/image", 1)
    rgb = load_image(args.image)
    deadline = time.monotonic() + args.timeout
    try:
        while "overlay" not in received and time.monotonic() < deadline and node.poll() is None:
            msg = to_image_msg(rgb, "rgb8")
            msg.header.stamp = client.get_clock().now().to_msg()
            msg.header.frame_id = "camera"
            publisher.publish(msg)
            end = time.monotonic() + 0.5
            while time.monotonic() < end and "overlay" not in received:
                rclpy.spin_once(client, timeout_sec=0.05)
    finally:
        node.terminate()
        node.wait(timeout=20)
        client.destroy_node()
        rclpy.shutdown()
    if "overlay" not in received:
        print("no overlay received (is the node starting? see its log above)", file=sys.stderr)
        return 1
    overlay = image_msg_to_rgb(received["overlay"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.ascontiguousarray(overlay), cv2.COLOR_RGB2BGR))
    if "segments" in received:
        table = json.loads(received["segments"].data)
        print(f"segments: {[(s['id'], s['label']) for s in table['segments']]}")
    print(f"overlay from the node written to {args.out} ({overlay.shape[1]}x{overlay.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
