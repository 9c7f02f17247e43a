"""The ROS node with the tiny random MAFT+ (the maftp_l_pan profile's wiring: CDT out-of-vocabulary branch, the
decoder's void, 0.2 / 0.7): the node's default params file, only `segmenter_config` changed; frames in, all outputs
out, labels from the vocabulary."""
from __future__ import annotations

import json
import os
import signal

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("sensor_msgs.msg")

from ros_test_utils import NodeProcess, RosClient, domain_id_for  # noqa: E402
from test_node import VOCAB_A, _serving  # noqa: E402

pytestmark = [pytest.mark.ros]


def test_node_serves_maftp_alone(tmp_path):
    domain = domain_id_for(__name__)
    client = RosClient(domain, name=f"ovs_maftp_client_{os.getpid()}")
    ns = f"/ovs_maftp_{os.getpid()}"
    proc = NodeProcess(domain, ns, params={
        "segmenter_config": "config/segmenter/maftp_tiny_random.yaml", "vocabulary": VOCAB_A,
        "input_reliability": "reliable", "input_depth": 10, "input_short_side": 64,
    }, log_dir=tmp_path).start()
    try:
        streams = _serving(proc, client, ns)  # waits for ~/labels, then for all outputs of one frame
        labels = streams.latest_labels()
        assert "person" in json.dumps(labels) and "wall" in json.dumps(labels)
        segments = json.loads(streams.segments.messages()[-1].data)
        assert isinstance(segments, dict)
        assert "generator maftp/tiny" in proc.output() and "classifier fcclip" in proc.output()
    finally:
        if proc.alive():
            proc.stop(signal.SIGTERM)
        client.close()
