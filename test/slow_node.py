"""Test helper: the real node with the real tiny Segmenter made deliberately slower (overload tests only).

Usage: python test/slow_node.py EXTRA_MS [node args] --ros-args ...
With OVS_TEST_SLOW_VOCABULARY_S=S in the environment, every vocabulary change of 100 classes or more also takes S
seconds longer (a stand-in for a large text tower on a CPU).
"""
import os
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
    vocabulary_s = float(os.environ.get("OVS_TEST_SLOW_VOCABULARY_S", "0"))
    if vocabulary_s > 0:
        real_set_vocabulary = segmenter_module.Segmenter.set_vocabulary

        def slow_set_vocabulary(self, vocabulary, *args, **kwargs):
            if not isinstance(vocabulary, str) and len(vocabulary) >= 100:
                time.sleep(vocabulary_s)
            return real_set_vocabulary(self, vocabulary, *args, **kwargs)

        segmenter_module.Segmenter.set_vocabulary = slow_set_vocabulary
    from ovs_ros.node import main as node_main

    return node_main([sys.argv[0]] + sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
