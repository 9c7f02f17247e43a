"""ovs-replay: bags written here (rosbag2 sqlite3 and MCAP storage via rosbags, a bare .mcap via mcap-ros2-support),
an image folder and a video, replayed in a subprocess and received by a test client."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
rosbags = pytest.importorskip("rosbags")
cv2 = pytest.importorskip("cv2")

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from ovs_ros.image_codec import compressed_msg_to_rgb, image_msg_to_numpy, rgb_to_compressed_bytes  # noqa: E402
from ovs_ros.replay import FrameSource, ReplayError  # noqa: E402
from ros_test_utils import REPO, RosClient, domain_id_for, ros_env, synthetic_rgb  # noqa: E402

pytestmark = [pytest.mark.ros]
H, W = 24, 32
FRAMES = [synthetic_rgb(H, W, seed=i) for i in range(5)]


def _frame_index(rgb: np.ndarray) -> int:
    """Which of FRAMES this is (exact for lossless sources)."""
    for i, f in enumerate(FRAMES):
        if np.array_equal(f, rgb):
            return i
    return -1


def write_rosbag2(path: Path, storage: str, compressed_topic: bool = True) -> Path:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    Img, Cmp = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    String = ts.types["std_msgs/msg/String"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        image_conn = writer.add_connection("/cam/image_raw", Img.__msgtype__, typestore=ts)
        other = writer.add_connection("/chatter", String.__msgtype__, typestore=ts)
        comp_conn = writer.add_connection("/cam/image_raw/compressed", Cmp.__msgtype__, typestore=ts) \
            if compressed_topic else None
        for i, rgb in enumerate(FRAMES):
            header = Header(stamp=Time(sec=100 + i, nanosec=7), frame_id="bag_cam")
            msg = Img(header=header, height=H, width=W, encoding="bgr8", is_bigendian=0, step=W * 3,
                      data=np.ascontiguousarray(rgb[:, :, ::-1]).reshape(-1))
            t = (100 + i) * 10**9
            writer.write(image_conn, t, ts.serialize_cdr(msg, Img.__msgtype__))
            writer.write(other, t, ts.serialize_cdr(String(data=f"hello {i}"), String.__msgtype__))
            if comp_conn is not None:
                data = np.frombuffer(rgb_to_compressed_bytes(rgb, "png"), np.uint8)
                writer.write(comp_conn, t, ts.serialize_cdr(Cmp(header=header, format="png", data=data),
                                                            Cmp.__msgtype__))
    return path


IMAGE_MSGDEF = (
    "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\n"
    "uint8[] data\n================================================================================\n"
    "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n"
    "================================================================================\n"
    "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n")


def write_bare_mcap(path: Path) -> Path:
    from mcap_ros2.writer import Writer

    with open(path, "wb") as f:
        writer = Writer(f)
        schema = writer.register_msgdef("sensor_msgs/msg/Image", IMAGE_MSGDEF)
        for i, rgb in enumerate(FRAMES):
            msg = {"header": {"stamp": {"sec": 200 + i, "nanosec": 0}, "frame_id": "mcap_cam"}, "height": H,
                   "width": W, "encoding": "rgb8", "is_bigendian": 0, "step": W * 3, "data": rgb.tobytes()}
            writer.write_message("/camera/image", schema, msg, log_time=(200 + i) * 10**9)
        writer.finish()
    return path


def write_mixed_mcap(path: Path, summary: bool = True) -> Path:
    """A bare .mcap as a robot logger writes it: JSON telemetry and a std_msgs/String channel besides the camera
    (stamps 300 + i s). `summary=False` leaves out the summary section (a recording that was never finalised)."""
    import json

    from mcap.writer import IndexType, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    Img, String = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/String"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    options = {} if summary else dict(use_chunking=False, index_types=IndexType.NONE, repeat_channels=False,
                                      repeat_schemas=False, use_statistics=False, use_summary_offsets=False)
    with open(path, "wb") as f:
        writer = Writer(f, **options)
        writer.start(profile="ros2", library="test_replay")
        image_schema = writer.register_schema("sensor_msgs/msg/Image", "ros2msg", IMAGE_MSGDEF.encode())
        string_schema = writer.register_schema("std_msgs/msg/String", "ros2msg", b"string data\n")
        json_schema = writer.register_schema("Telemetry", "jsonschema", b'{"type": "object"}')
        telemetry = writer.register_channel("/telemetry", "json", json_schema)
        chatter = writer.register_channel("/chatter", "cdr", string_schema)
        camera = writer.register_channel("/camera/image", "cdr", image_schema)
        for i, rgb in enumerate(FRAMES):
            t = (300 + i) * 10**9
            header = Header(stamp=Time(sec=300 + i, nanosec=0), frame_id="mixed_cam")
            image = Img(header=header, height=H, width=W, encoding="rgb8", is_bigendian=0, step=W * 3,
                        data=np.ascontiguousarray(rgb).reshape(-1))
            writer.add_message(telemetry, t, json.dumps({"battery": 0.9 - i / 100}).encode(), t)
            writer.add_message(chatter, t, bytes(ts.serialize_cdr(String(data=f"hi {i}"), String.__msgtype__)), t)
            writer.add_message(camera, t, bytes(ts.serialize_cdr(image, Img.__msgtype__)), t)
        writer.finish()
    return path


def write_folder(path: Path) -> Path:
    path.mkdir()
    for i, rgb in enumerate(FRAMES):
        cv2.imwrite(str(path / f"frame_{i:03d}.png"), rgb[:, :, ::-1])
    (path / "notes.txt").write_text("not an image")
    return path


# ------------------------------------------------------------------------------------------------- readers only
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag2_reader(tmp_path, storage):
    bag = write_rosbag2(tmp_path / "bag", storage, compressed_topic=False)
    frames = list(FrameSource(bag).frames())
    assert [_frame_index(f[0]) for f in frames] == [0, 1, 2, 3, 4]
    assert frames[2][1] == (102, 7) and frames[2][2] == "bag_cam"


def test_rosbag2_reader_needs_topic_choice(tmp_path):
    bag = write_rosbag2(tmp_path / "bag", "sqlite3", compressed_topic=True)
    with pytest.raises(ReplayError, match="--bag-topic"):
        list(FrameSource(bag).frames())
    frames = list(FrameSource(bag, bag_topic="/cam/image_raw/compressed").frames())
    assert [_frame_index(f[0]) for f in frames] == [0, 1, 2, 3, 4]  # png is lossless
    with pytest.raises(ReplayError, match="no image topic"):
        list(FrameSource(bag, bag_topic="/chatter").frames())


def test_bare_mcap_and_folder_and_video_readers(tmp_path):
    frames = list(FrameSource(write_bare_mcap(tmp_path / "x.mcap")).frames())
    assert [_frame_index(f[0]) for f in frames] == [0, 1, 2, 3, 4] and frames[0][1:] == ((200, 0), "mcap_cam")
    frames = list(FrameSource(write_folder(tmp_path / "imgs")).frames())
    assert [_frame_index(f[0]) for f in frames] == [0, 1, 2, 3, 4]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for rgb in FRAMES:
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()
    frames = list(FrameSource(video).frames())
    assert len(frames) == 5 and frames[0][0].shape == (H, W, 3)
    assert np.abs(frames[1][0].astype(int) - FRAMES[1]).mean() < 20  # MJPG is lossy
    with pytest.raises(ReplayError, match="no such file"):
        FrameSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReplayError, match="no images"):
        FrameSource(tmp_path / "empty")


@pytest.mark.parametrize("summary", [True, False])
def test_bare_mcap_with_other_channels(tmp_path, summary):
    """JSON and non-image ROS channels are skipped without being decoded (they used to abort the replay)."""
    from mcap.reader import make_reader

    path = write_mixed_mcap(tmp_path / "mixed.mcap", summary=summary)
    with open(path, "rb") as f:
        assert (make_reader(f).get_summary() is not None) == summary
    frames = list(FrameSource(path).frames())
    assert [_frame_index(f[0]) for f in frames] == [0, 1, 2, 3, 4]
    assert [f[1] for f in frames] == [(300 + i, 0) for i in range(5)] and frames[0][2] == "mixed_cam"
    assert len(list(FrameSource(path, bag_topic="/camera/image").frames())) == 5
    with pytest.raises(ReplayError, match="no ROS 2 image topic /chatter" if summary else "no sensor_msgs Image"):
        list(FrameSource(path, bag_topic="/chatter").frames())


# ------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def domain():
    return domain_id_for(__name__)


@pytest.fixture(scope="module")
def client(domain):
    c = RosClient(domain, name=f"replay_test_{os.getpid()}")
    yield c
    c.close()


def run_replay(domain, args, timeout=60.0):
    cmd = [sys.executable, "-m", "ovs_ros.replay"] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=str(REPO), env=ros_env(domain), capture_output=True, text=True, timeout=timeout)


def replayed(got, proc, count, timeout=5.0):
    """The messages `got` received from a finished `ovs-replay` run that must have exited cleanly."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    deadline = time.monotonic() + timeout
    while len(got.messages()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return got.messages()


def test_replay_bag_loops_at_rate(tmp_path, domain, client):
    bag = write_rosbag2(tmp_path / "bag", "mcap", compressed_topic=False)
    ns = f"/replay_{os.getpid()}_a"
    got = client.subscribe(Image, f"{ns}/cam", depth=100)
    start = time.monotonic()
    proc = run_replay(domain, [bag, "--topic", "cam", "--rate", "20", "--max-frames", "12", "--wait-subscribers", "1",
                               "--frame-id", "replayed", "--ros-args", "-r", f"__ns:={ns}"])
    elapsed = time.monotonic() - start
    msgs = replayed(got, proc, 12)
    assert len(msgs) == 12
    assert [_frame_index(image_msg_to_numpy(m)) for m in msgs] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert all(m.header.frame_id == "replayed" and m.encoding == "rgb8" for m in msgs)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in msgs]
    span = stamps[-1] - stamps[0]
    assert 11 / 20 * 0.8 < span < 11 / 20 * 2.5, f"12 frames at 20 fps took {span:.2f} s"
    assert elapsed < 30


def test_replay_folder_compressed_once(tmp_path, domain, client):
    folder = write_folder(tmp_path / "imgs")
    ns = f"/replay_{os.getpid()}_b"
    got = client.subscribe(CompressedImage, f"{ns}/image/compressed", depth=100)
    proc = run_replay(domain, [folder, "--compressed", "png", "--no-loop", "--rate", "50", "--stamp", "original",
                               "--wait-subscribers", "1", "--ros-args", "-r", f"__ns:={ns}"])
    msgs = replayed(got, proc, 5)
    assert [_frame_index(compressed_msg_to_rgb(m)) for m in msgs] == [0, 1, 2, 3, 4]
    assert all(m.format == "png" and m.header.frame_id == "camera" for m in msgs)


def test_replay_original_stamps_never_go_back_when_looping(tmp_path, domain, client):
    path = write_mixed_mcap(tmp_path / "mixed.mcap")
    ns = f"/replay_{os.getpid()}_c"
    got = client.subscribe(Image, f"{ns}/image", depth=100)
    proc = run_replay(domain, [path, "--rate", "50", "--max-frames", "12", "--stamp", "original",
                               "--wait-subscribers", "1", "--ros-args", "-r", f"__ns:={ns}"])
    msgs = replayed(got, proc, 12)
    assert [_frame_index(image_msg_to_numpy(m)) for m in msgs] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs]
    assert stamps[:5] == [(300 + i) * 10**9 for i in range(5)], "the first pass keeps the recorded stamps"
    assert all(b > a for a, b in zip(stamps, stamps[1:])), f"stamps went back: {stamps}"
    # each later pass is shifted by the recording's span (4 s) plus one frame interval (1 s)
    assert stamps[5] - stamps[0] == 5 * 10**9 and stamps[10] - stamps[0] == 10 * 10**9


def test_replay_bad_source_exit_code(tmp_path, domain):
    proc = run_replay(domain, [tmp_path / "nothing_here"])
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
