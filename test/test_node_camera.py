"""The node as a robotics user meets it: camera-sized frames from reliable and sensor-data publishers, bulk parameter
reads, Nav2 / vision_msgs outputs, camera_info, ovs-vocab, and nothing waiting behind a long vocabulary change.

Real rclpy, node and test client in separate processes, the real tiny Segmenter (random weights).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("sensor_msgs.msg")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ovs_ros.image_codec import image_msg_to_numpy  # noqa: E402
from ovs_ros.node.payloads import load_vision_msgs  # noqa: E402
from ros_test_utils import (  # noqa: E402
    REPO, NodeProcess, RosClient, diagnostics_status, diagnostics_values, domain_id_for, image_msg, ros_env,
    stamp_from_json, stamp_key, synthetic_rgb)

pytestmark = [pytest.mark.ros]

START_TIMEOUT = 120.0
FAST = {"input_short_side": 64}
VGA = (480, 640)
VOCAB_A = ["person,man,woman", "chair", "table,desk", "stuff:floor", "stuff:wall"]


def vision_msgs_or_skip():
    """vision_msgs, built by tools/build_ros_interfaces.sh; CI must have it (a skip there would hide a failure)."""
    module = load_vision_msgs()
    if module is None:
        if os.environ.get("CI") == "true":
            pytest.fail("vision_msgs is not importable on CI: tools/build_ros_interfaces.sh did not run or failed")
        pytest.skip("vision_msgs not built here (bash tools/build_ros_interfaces.sh .venv)")
    return module


@pytest.fixture(scope="module")
def domain() -> int:
    return domain_id_for(__name__)


@pytest.fixture(scope="module")
def client(domain):
    c = RosClient(domain, name=f"ovs_camera_client_{os.getpid()}")
    yield c
    c.close()


class Outputs:
    """Subscriptions to every output of one node."""

    def __init__(self, client: RosClient, fqn: str) -> None:
        self.fqn = fqn
        self.segments = client.subscribe(String, f"{fqn}/segments")
        self.semantic = client.subscribe(Image, f"{fqn}/semantic")
        self.panoptic = client.subscribe(Image, f"{fqn}/panoptic")
        self.confidence = client.subscribe(Image, f"{fqn}/confidence")
        self.camera_info = client.subscribe(CameraInfo, f"{fqn}/camera_info")
        self.labels = client.subscribe(String, f"{fqn}/labels", depth=10, transient_local=True)
        self.diagnostics = client.subscribe(DiagnosticArray, "/diagnostics", depth=50)
        vision_msgs = load_vision_msgs()
        if vision_msgs is not None:
            self.detections = client.subscribe(vision_msgs.Detection2DArray, f"{fqn}/detections")
            self.label_info = client.subscribe(vision_msgs.LabelInfo, f"{fqn}/label_info", depth=5,
                                               transient_local=True)

    def diag(self, predicate, timeout: float) -> dict:
        """The first /diagnostics values of this node (received from now on) with `predicate(values, status)`."""
        start = len(self.diagnostics.items)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, msg in self.diagnostics.items[start:]:
                status = diagnostics_status(msg, self.fqn)
                if status is not None:
                    values = {kv.key: kv.value for kv in status.values}
                    if predicate(values, status):
                        return {**values, "_message": status.message, "_level": int.from_bytes(status.level, "big")
                                if isinstance(status.level, bytes) else int(status.level),
                                "_name": status.name, "_hardware_id": status.hardware_id}
            time.sleep(0.1)
        raise AssertionError(f"no matching /diagnostics from {self.fqn} within {timeout} s")

    def segments_by_stamp(self) -> dict:
        return {stamp_from_json(json.loads(m.data)): json.loads(m.data) for m in self.segments.messages()}


def wait_labels(node: NodeProcess, outputs: Outputs, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if outputs.labels.messages():
            return
        if not node.alive():
            raise AssertionError(f"node exited with {node.proc.returncode}:\n{node.output()[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"node not ready (no ~/labels) after {timeout} s:\n{node.output()[-4000:]}")


@pytest.fixture(scope="module")
def camera_node(domain, client, tmp_path_factory):
    """The node with the shipped params file as a new user starts it (input_reliability auto), plus FAST."""
    ns = f"/ovs_cam_{os.getpid()}"
    proc = NodeProcess(domain, ns, params={"diagnostics_period": 0.5, "no_input_warning_s": 4.0, **FAST},
                       log_dir=tmp_path_factory.mktemp("camera_node")).start()
    outputs = Outputs(client, proc.fqn)
    try:
        wait_labels(proc, outputs)
    except BaseException:
        proc.stop(signal.SIGKILL)
        raise
    yield proc, outputs, ns
    if proc.alive():
        proc.stop(signal.SIGTERM)


def publish_at(pub, client, count: int, rate_hz: float, size=VGA, seed0: int = 0) -> list:
    """Publish `count` frames at `rate_hz`; returns their stamp keys."""
    keys = []
    next_t = time.monotonic()
    for i in range(count):
        stamp = client.now_msg()
        pub.publish(image_msg(synthetic_rgb(*size, seed=seed0 + i), stamp))
        keys.append(stamp_key(stamp))
        next_t += 1.0 / rate_hz
        time.sleep(max(0.0, next_t - time.monotonic()))
    return keys


# ------------------------------------------------------------------------------------------------- camera input
def test_vga_from_a_reliable_camera_every_frame_segmented(camera_node, client):
    """usb_cam / RealSense publish reliable: auto matches it, and every 640x480 frame comes out."""
    proc, outputs, ns = camera_node
    pub = client.publisher(Image, f"{ns}/image", reliable=True, depth=10)
    try:
        outputs.diag(lambda v, s: v.get("input_reliability") == "reliable" and int(v["input_publishers"]) >= 1,
                     timeout=20.0)
        publish_at(pub, client, 2, 2.0, seed0=900)  # the first frames of a new connection may still be in flight
        time.sleep(1.0)
        keys = publish_at(pub, client, 10, 2.0, seed0=0)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and not set(keys) <= set(outputs.segments_by_stamp()):
            time.sleep(0.2)
        got = [k for k in keys if k in outputs.segments_by_stamp()]
        assert len(got) == len(keys), f"{len(got)} of {len(keys)} VGA frames segmented\n{proc.output()[-3000:]}"
        table = outputs.segments_by_stamp()[keys[0]]
        assert (table["width"], table["height"]) == (VGA[1], VGA[0])
        values = outputs.diag(lambda v, s: True, timeout=5.0)
        assert int(values["input_lost"]) == 0 and values["input_loss_ratio"] == "0.000", values
    finally:
        client.node.destroy_publisher(pub)
    log = proc.output()
    assert "first frame segmented: 640x480" in log, log[-3000:]
    assert "input QoS re-matched" in log and "-> reliable" in log


def test_vga_from_a_sensor_data_camera_arrives_or_the_node_says_why(camera_node, client):
    """A best-effort (sensor-data) camera: frames arrive, or within 15 s a WARN names the middleware and the fixes."""
    proc, outputs, ns = camera_node
    pub = client.node.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
    try:
        outputs.diag(lambda v, s: v.get("input_reliability") == "best_effort" and int(v["input_publishers"]) >= 1,
                     timeout=20.0)
        started = time.monotonic()
        keys = publish_at(pub, client, 30, 2.0, seed0=100)  # 15 s of camera
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        got = [k for k in keys if k in outputs.segments_by_stamp()]
        if len(got) < len(keys):
            warn = outputs.diag(lambda v, s: "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA" in s.message, timeout=2.0)
            # it was raised while the camera ran, not only afterwards
            diag_msgs = [m for t, m in outputs.diagnostics.items if t - outputs.diagnostics.items[0][0] >= 0]
            early = [m for m in diag_msgs if (s := diagnostics_status(m, proc.fqn)) is not None
                     and "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA" in s.message]
            assert early, "no WARN naming the remedies"
            print(f"\nsensor-data VGA: {len(got)}/{len(keys)} frames arrived in {elapsed:.0f} s; WARN: "
                  f"{warn['_message']}")
            assert warn["_level"] == 1  # DiagnosticStatus.WARN
        else:
            print(f"\nsensor-data VGA: all {len(keys)} frames arrived")
    finally:
        client.node.destroy_publisher(pub)
    log = proc.output()
    if len(got) < len(keys):
        assert "LARGE_DATA" in log, "the WARN is not in the log"


def test_loss_warning_names_the_counted_loss():
    """The loss ratio comes from the publishers' sequence numbers: gaps are counted per publisher."""
    from ovs_ros.node.health import InputLossTracker

    tracker = InputLossTracker(window_s=10.0)
    gid_a, gid_b = {"data": b"a" * 16}, {"data": b"b" * 16}
    lost = [tracker.record({"publication_sequence_number": seq, "publisher_gid": gid}, now=float(i))
            for i, (seq, gid) in enumerate([(1, gid_a), (2, gid_a), (1, gid_b), (5, gid_a), (2, gid_b), (9, gid_a)])]
    assert lost == [0, 0, 0, 2, 0, 3]
    received, n_lost, ratio = tracker.recent(now=6.0)
    assert (received, n_lost) == (6, 5) and ratio == pytest.approx(5 / 11)
    assert tracker.recent(now=100.0) == (0, 0, 0.0)  # outside the window
    assert tracker.total_lost == 5 and tracker.supported
    unsupported = InputLossTracker()
    unsupported.record({"publication_sequence_number": None})
    assert not unsupported.supported


# ------------------------------------------------------------------------------------------------- parameters
def test_every_parameter_readable_in_bulk_and_vocabulary_reads_back(camera_node, client):
    """ros2 param dump does ListParameters then one GetParameters over all names: every one has a value, and
    `vocabulary` shows the classes in use though they come from the segmenter config, then from a file."""
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters, ListParameters

    from ovs_ros.node.vocabulary_params import vocabulary_strings
    from ovs_ros.paths import resolve_data_path
    from ovs_ros.vocabulary import Vocabulary

    proc, outputs, _ = camera_node
    names = list(client.call(ListParameters, f"{proc.fqn}/list_parameters", ListParameters.Request()).result.names)
    assert "vocabulary" in names and "stuff_classes" in names and len(names) > 30

    def get_all() -> dict:
        reply = client.call(GetParameters, f"{proc.fqn}/get_parameters", GetParameters.Request(names=names))
        assert len(reply.values) == len(names), "a bulk read returned fewer values than names"
        return dict(zip(names, reply.values))

    values = get_all()
    unset = [n for n, v in values.items() if v.type == ParameterType.PARAMETER_NOT_SET]
    assert not unset, f"parameters without a value: {unset}"
    config_vocab = Vocabulary.from_yaml(resolve_data_path("coco_panoptic", "config/vocabularies"))
    assert list(values["vocabulary"].string_array_value) == vocabulary_strings(config_vocab)
    assert list(values["stuff_classes"].string_array_value) == []
    try:
        assert client.set_parameters(proc.fqn, {"vocabulary_file": "ade20k_150"})[0].successful
        ade = Vocabulary.from_yaml(resolve_data_path("ade20k_150", "config/vocabularies"))
        assert list(get_all()["vocabulary"].string_array_value) == vocabulary_strings(ade)
        assert json.loads(outputs.labels.messages()[-1].data)["classes"][0]["name"] == ade.labels[0]
    finally:
        assert client.set_parameters(proc.fqn, {"vocabulary_file": ""})[0].successful
    assert list(get_all()["vocabulary"].string_array_value) == vocabulary_strings(config_vocab)


def test_read_back_strings_round_trip():
    from ovs_ros.node.vocabulary_params import vocabulary_strings
    from ovs_ros.vocabulary import Vocabulary

    vocab = Vocabulary.from_strings(["person,man", "stuff:sky,clouds", "red mug"])
    assert vocabulary_strings(vocab) == ["person,man", "stuff:sky,clouds", "red mug"]
    assert Vocabulary.from_strings(vocabulary_strings(vocab)) == vocab


# ------------------------------------------------------------------------------------------------- Nav2 / vision_msgs
def test_nav2_outputs_mono8_confidence_label_info_detections(camera_node, client):
    """What the Nav2 semantic segmentation layer reads (mono8 class image, mono8 confidence, LabelInfo) and
    vision_msgs Detection2DArray, all consistent with ~/segments and ~/panoptic for the same stamp."""
    proc, outputs, ns = camera_node
    replies = client.set_parameters(proc.fqn, {"semantic_encoding": "mono8", "semantic_void_value": 0})
    assert all(r.successful for r in replies), [r.reason for r in replies]
    pub = client.publisher(Image, f"{ns}/image", reliable=True, depth=10)
    info = CameraInfo(width=128, height=96, distortion_model="plumb_bob")
    info.k = [100.0, 0.0, 64.0, 0.0, 100.0, 48.0, 0.0, 0.0, 1.0]
    info_pub = client.publisher(CameraInfo, f"{ns}/camera_info", reliable=True, depth=5)
    try:
        outputs.diag(lambda v, s: v.get("input_reliability") == "reliable", timeout=20.0)
        key = None
        for i in range(20):  # until one stamp has come out on every output
            info.header.stamp = client.now_msg()
            info_pub.publish(info)
            time.sleep(0.1)
            key = publish_at(pub, client, 1, 5.0, size=(96, 128), seed0=40 + i)[0]

            def has(c):
                return c.wait_for(lambda m: stamp_key(m.header.stamp) == key, 1.5) is not None
            if has(outputs.semantic) and has(outputs.confidence) and has(outputs.panoptic) \
                    and has(outputs.camera_info) and key in outputs.segments_by_stamp():
                break
        else:
            raise AssertionError(f"outputs did not come out together\n{proc.output()[-3000:]}")
        pick = {}
        for name in ("semantic", "confidence", "panoptic", "camera_info"):
            pick[name] = next(m for m in getattr(outputs, name).messages() if stamp_key(m.header.stamp) == key)
        table = outputs.segments_by_stamp()[key]
        labels = json.loads(outputs.labels.messages()[-1].data)
        label_info = detections = None
        if load_vision_msgs() is not None:  # taken before the mapping is switched back
            label_info = outputs.label_info.wait_for(
                lambda m: [(c.class_id, c.class_name) for c in m.class_map] == [
                    (c["semantic_value"], c["name"]) for c in labels["classes"]], 10.0)
            detections = outputs.detections.wait_for(lambda m: stamp_key(m.header.stamp) == key, 10.0)
    finally:
        client.node.destroy_publisher(pub)
        client.node.destroy_publisher(info_pub)
        replies = client.set_parameters(proc.fqn, {"semantic_encoding": "16UC1", "semantic_void_value": 65535})
        assert all(r.successful for r in replies)
    assert pick["semantic"].encoding == "mono8" and pick["confidence"].encoding == "mono8"
    assert labels["semantic_encoding"] == "mono8" and labels["semantic_void_pixel"] == 0
    semantic = image_msg_to_numpy(pick["semantic"])
    confidence = image_msg_to_numpy(pick["confidence"])
    panoptic = image_msg_to_numpy(pick["panoptic"])
    assert semantic.dtype == np.uint8 and semantic.shape == panoptic.shape == (96, 128)
    np.testing.assert_array_equal(semantic[panoptic == 0], 0)
    np.testing.assert_array_equal(confidence[panoptic == 0], 0)
    assert table["segments"], "no segment to check against"
    for seg in table["segments"]:
        where = panoptic == seg["id"]
        assert seg["semantic_value"] == seg["class_index"] + 1
        np.testing.assert_array_equal(semantic[where], seg["semantic_value"])
        np.testing.assert_array_equal(confidence[where], int(round(seg["score"] * 255)))
    np.testing.assert_allclose(pick["camera_info"].k, info.k)
    assert pick["camera_info"].header.frame_id == "camera"  # the image's header, not the camera_info's

    vision_msgs = vision_msgs_or_skip()
    assert label_info is not None, "no ~/label_info with the class map of ~/labels (values = index + 1)"
    assert label_info.class_map[0].class_id == 1
    assert isinstance(detections, vision_msgs.Detection2DArray), "no ~/detections for the frame"
    things = [s for s in table["segments"] if s["is_thing"]]
    assert [d.id for d in detections.detections] == [str(s["id"]) for s in things]
    for det, seg in zip(detections.detections, things):
        x, y, w, h = seg["bbox_xywh"]
        assert (det.bbox.center.position.x, det.bbox.center.position.y) == (x + w / 2, y + h / 2)
        assert (det.bbox.size_x, det.bbox.size_y) == (w, h)
        assert det.results[0].hypothesis.class_id == str(seg["semantic_value"])
        assert det.results[0].hypothesis.score == pytest.approx(seg["score"], abs=1e-5)


def test_mono8_refuses_a_vocabulary_it_cannot_hold(camera_node, client):
    proc, _, _ = camera_node
    big = [f"thing {i}" for i in range(300)]
    assert client.set_parameters(proc.fqn, {"semantic_encoding": "mono8"})[0].successful
    try:
        reply = client.set_parameters(proc.fqn, {"vocabulary": big})[0]
        assert not reply.successful and "mono8" in reply.reason and "254" in reply.reason
    finally:
        assert client.set_parameters(proc.fqn, {"semantic_encoding": "16UC1"})[0].successful


def test_diagnostics_named_as_diagnostic_updater_does(camera_node):
    proc, outputs, _ = camera_node
    values = outputs.diag(lambda v, s: True, timeout=10.0)
    assert values["_name"] == "ovs: segmentation"  # `<node name>: <task>`, no leading slash
    assert values["_hardware_id"] and values["_hardware_id"] != "cpu"  # the CPU's (or GPU's) model name


def test_library_log_lines_go_through_the_ros_logger(camera_node):
    """Model-code `logging` lines reach the ROS logger: severity, stamp and node name in front (and /rosout)."""
    proc, _, _ = camera_node
    lines = [line for line in proc.output().splitlines() if "[ovs_ros." in line]
    assert lines, proc.output()[-3000:]
    assert all(line.startswith(("[INFO]", "[WARN]", "[ERROR]", "[DEBUG]", "[FATAL]")) for line in lines), lines


# ------------------------------------------------------------------------------------------------- ovs-vocab
def _ovs_vocab(domain: int, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovs_ros.vocab_cli", *args], cwd=str(REPO), env=ros_env(domain),
                          capture_output=True, text=True, timeout=timeout)


def test_ovs_vocab_sets_gets_lists_and_reports_refusals(camera_node, domain):
    proc, outputs, _ = camera_node
    try:
        done = _ovs_vocab(domain, "--node", proc.fqn, "set", "red mug", "laptop,notebook", "stuff:floor")
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
        got = _ovs_vocab(domain, "--node", proc.fqn, "get")
        assert got.returncode == 0 and '"laptop,notebook"' in got.stdout, got.stderr
        listed = _ovs_vocab(domain, "--node", proc.fqn, "list")
        assert listed.returncode == 0, listed.stderr
        assert "3 classes" in listed.stdout and "stuff  floor" in listed.stdout and "laptop, notebook" in listed.stdout
        refused = _ovs_vocab(domain, "--node", proc.fqn, "set", "--templates", "t99")
        assert refused.returncode == 1 and "t99" in refused.stderr
        missing = _ovs_vocab(domain, "--node", "/no_such_node", "--timeout", "3", "get")
        assert missing.returncode == 2 and "not available" in missing.stderr
    finally:
        assert _ovs_vocab(domain, "--node", proc.fqn, "set", "--file", "coco_panoptic").returncode == 0


# ------------------------------------------------------------------------------------------------- no waiting
def test_long_vocabulary_change_blocks_nothing_else(domain, client, tmp_path):
    """A 1,000-class change that takes > 5 s (a large text tower on a CPU): /diagnostics keeps its period,
    get_state and get_parameters answer at once. The node runs managed with use_sim_time and no /clock, as
    under a lifecycle manager with a paused bag: diagnostics still come (steady timer)."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rcl_interfaces.srv import GetParameters

    ns = f"/ovs_swap_{os.getpid()}"
    proc = NodeProcess(domain, ns, params={"vocabulary": VOCAB_A, "diagnostics_period": 0.5, **FAST},
                       cli_args=["--autostart=false", "--use-sim-time=true"], slow_ms=1, log_dir=tmp_path,
                       env={"OVS_TEST_SLOW_VOCABULARY_S": "6"}).start()
    outputs = Outputs(client, proc.fqn)
    try:
        before = outputs.diag(lambda v, s: True, timeout=START_TIMEOUT)
        assert before["state"] == "unconfigured"  # reported before configure, under sim time without /clock
        use_sim = client.call(GetParameters, f"{proc.fqn}/get_parameters",
                              GetParameters.Request(names=["use_sim_time"])).values[0]
        assert use_sim.bool_value is True
        for tid in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            reply = client.call(ChangeState, f"{proc.fqn}/change_state",
                                ChangeState.Request(transition=Transition(id=tid)), timeout=START_TIMEOUT,
                                retry_s=30.0)
            assert reply.success, proc.output()[-3000:]
        outputs.diag(lambda v, s: v["state"] == "active", timeout=20.0)

        from ros_test_utils import to_parameter_msg
        from rcl_interfaces.srv import SetParameters

        request = SetParameters.Request(parameters=[to_parameter_msg("vocabulary",
                                                                     [f"object {i}" for i in range(1000)])])
        set_client = client.node.create_client(SetParameters, f"{proc.fqn}/set_parameters")
        assert set_client.wait_for_service(timeout_sec=20.0)
        t0, t0_wall = time.monotonic(), time.time()  # Collector items carry time.time()
        diag_start = len(outputs.diagnostics.items)
        future = set_client.call_async(request)
        time.sleep(1.0)  # the change is now encoding
        state_s, params_s = [], []
        while not future.done() and time.monotonic() - t0 < 60.0:
            start = time.monotonic()
            state = client.call(GetState, f"{proc.fqn}/get_state", GetState.Request(), timeout=10.0)
            state_s.append(time.monotonic() - start)
            start = time.monotonic()
            client.call(GetParameters, f"{proc.fqn}/get_parameters", GetParameters.Request(names=["templates"]),
                        timeout=10.0)
            params_s.append(time.monotonic() - start)
            assert state.current_state.label == "active"
            time.sleep(0.3)
        swap_s = time.monotonic() - t0
        assert future.done() and future.result().results[0].successful, "the 1,000-class change failed"
        client.node.destroy_client(set_client)
        stamps = [t for t, m in outputs.diagnostics.items[diag_start:] if diagnostics_values(m, proc.fqn)]
    finally:
        proc.stop(signal.SIGTERM)
    gaps = np.diff([t for t in stamps if t - t0_wall <= swap_s])
    assert len(gaps) >= 8, f"{len(stamps)} /diagnostics during a {swap_s:.1f} s change"
    print(f"\n1,000-class change {swap_s:.1f} s: {len(stamps)} diagnostics, max gap {gaps.max():.2f} s; get_state "
          f"max {max(state_s) * 1e3:.0f} ms, get_parameters max {max(params_s) * 1e3:.0f} ms")
    assert swap_s > 5.0, "the change was not long enough to show anything"
    assert gaps.max() < 1.5, f"/diagnostics stalled during the change: gaps {gaps}"
    assert max(state_s) < 2.0 and max(params_s) < 2.0, (state_s, params_s)
    assert len(state_s) >= 3


# ------------------------------------------------------------------------------------------------- in process
def test_compressed_input_follows_the_image_remap(domain):
    """`-r image:=/cam/image_raw` moves the compressed input to /cam/image_raw/compressed (image_transport naming),
    an explicit image/compressed remap still wins, and camera_info is the image's sibling."""
    import rclpy
    from rclpy.context import Context

    from ovs_ros.node.input import camera_info_topic, input_topic

    context = Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        plain = rclpy.create_node("a", context=context, cli_args=["--ros-args", "-r", "image:=/cam/color/image_raw"])
        assert input_topic(plain, "compressed") == "/cam/color/image_raw/compressed"
        assert input_topic(plain, "raw") == "/cam/color/image_raw"
        assert camera_info_topic(plain) == "/cam/color/camera_info"
        both = rclpy.create_node("b", context=context, cli_args=[
            "--ros-args", "-r", "image:=/cam/image_raw", "-r", "image/compressed:=/other/jpeg"])
        assert input_topic(both, "compressed") == "/other/jpeg"
        default = rclpy.create_node("c", namespace="/robot", context=context)
        assert input_topic(default, "compressed") == "/robot/image/compressed"
        assert camera_info_topic(default) == "/robot/camera_info"
    finally:
        rclpy.try_shutdown(context=context)


def test_auto_reliability_rule():
    from ovs_ros.node.input import reliability_for

    assert reliability_for([]) == "best_effort"
    assert reliability_for(["reliable", "reliable"]) == "reliable"
    assert reliability_for(["reliable", "best_effort"]) == "best_effort"


def test_python_logging_bridged_to_the_ros_logger():
    import logging

    from ovs_ros.node.log_bridge import bridge_python_logging

    class Recorder:
        def __init__(self):
            self.lines = []

        def get_effective_level(self):
            return 20

        def __getattr__(self, level):
            return lambda text: self.lines.append((level, text))

    ros_logger = Recorder()
    bridge_python_logging(ros_logger)
    try:
        logging.getLogger("ovs_ros.model_factory").warning("weights %s missing", "x.pth")
        logging.getLogger("ovs_ros.text_cache").debug("below the ROS level")
        logging.getLogger("ovs_training.trainer").error("boom")
    finally:
        for name in ("ovs_ros", "ovs_training"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert ros_logger.lines == [("warning", "[ovs_ros.model_factory] weights x.pth missing"),
                                ("error", "[ovs_training.trainer] boom")]
