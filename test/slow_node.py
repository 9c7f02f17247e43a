"""Test helper: the real node with the real tiny Segmenter made deliberately slower (overload tests only).

Usage: python test/slow_node.py EXTRA_MS [node args] --ros-args ...
"""
import sys
import time


def main() -> int:
    extra_s = float(sys.argv[1]) / 1000.0
    from ovs_ros import segmenter as segmenter_module

    real_segment = segmenter_module.Segmenter.segment

    def slow_segment(self, rgb):
        result = real_segment(self, rgb)
        time.sleep(extra_s)
        return result

    segmenter_module.Segmenter.segment = slow_segment
    from ovs_ros.node import main as node_main

    return node_main([sys.argv[0]] + sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
