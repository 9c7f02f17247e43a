"""Helpers for the ROS tests: the node runs in its own process, the test client in pytest's process.

Isolation: each test module picks its own ROS_DOMAIN_ID (from the pid and the module name) and a unique namespace,
and discovery stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO / "config" / "ovs.yaml"
TEST_DIR = Path(__file__).resolve().parent

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def domain_id_for(module_name: str) -> int:
    """A ROS domain (1..100, all valid with the default port mapping) unlikely to collide with a parallel run."""
    return 1 + (os.getpid() * 31 + zlib.crc32(module_name.encode())) % 100


def ros_env(domain_id: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "PYTHONUNBUFFERED": "1",
        "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
        "RCUTILS_COLORIZED_OUTPUT": "0",
        # The CI machine has 2 cores shared by several jobs: one torch thread keeps the node's timing steady.
        "OMP_NUM_THREADS": env.get("OVS_TEST_TORCH_THREADS", "1"),
    })
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated since Jazzy (prints a warning); the range above replaces it
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _param_arg(name: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(repr(v) for v in value) + "]"
    else:
        text = str(value)
    return f"{name}:={text}"


# `python -c SLOW_START_CODE SECONDS [node args]`: the real node whose model load first sleeps SECONDS (in Python,
# where signal handlers run), announced on stdout, so a test can signal it in the middle of a long start-up.
SLOW_START_MARK = "OVS_TEST: model load starts"
SLOW_START_CODE = f"""
import sys, time
from ovs_ros import segmenter
real = segmenter.Segmenter.from_config.__func__
def slow(cls, *args, **kwargs):
    print({SLOW_START_MARK!r}, flush=True)
    time.sleep(float(sys.argv[1]))
    return real(cls, *args, **kwargs)
segmenter.Segmenter.from_config = classmethod(slow)
from ovs_ros.node import main
sys.exit(main([sys.argv[0]] + sys.argv[2:]))
"""


class NodeProcess:
    """`python -m ovs_ros.node --ros-args --params-file config/ovs.yaml -r __ns:=... -p ...` in a subprocess.

    `slow_ms` > 0 runs test/slow_node.py instead: the real tiny Segmenter with a sleep after each frame (overload).
    `slow_start_s` > 0 runs `SLOW_START_CODE`: the model load takes that much longer.
    """

    def __init__(self, domain_id: int, namespace: str, params: Optional[Dict[str, Any]] = None,
                 cli_args: Sequence[str] = (), slow_ms: int = 0, log_dir: Optional[Path] = None,
                 name: str = "ovs", slow_start_s: float = 0.0, env: Optional[Dict[str, str]] = None) -> None:
        self.domain_id = domain_id
        self.namespace = namespace
        self.name = name
        self.fqn = f"{namespace.rstrip('/')}/{name}"
        self.params = dict(params or {})
        self.cli_args = list(cli_args)
        self.slow_ms = slow_ms
        self.slow_start_s = slow_start_s
        self.env = dict(env or {})
        self.log_dir = Path(log_dir or "/tmp")
        self.proc: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None

    def command(self) -> List[str]:
        if self.slow_ms:
            head = [sys.executable, str(TEST_DIR / "slow_node.py"), str(self.slow_ms)]
        elif self.slow_start_s:
            head = [sys.executable, "-c", SLOW_START_CODE, str(self.slow_start_s)]
        else:
            head = [sys.executable, "-m", "ovs_ros.node"]
        cmd = head + self.cli_args + ["--ros-args", "--params-file", str(PARAMS_FILE), "-r", f"__ns:={self.namespace}"]
        if self.name != "ovs":
            cmd += ["-r", f"__node:={self.name}"]
        for key, value in self.params.items():
            cmd += ["-p", _param_arg(key, value)]
        return cmd

    def start(self) -> "NodeProcess":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        tag = self.namespace.strip("/").replace("/", "_") or "root"
        self.stdout_path = self.log_dir / f"{tag}.stdout.txt"
        self.stderr_path = self.log_dir / f"{tag}.stderr.txt"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.command(), cwd=str(REPO), env={**ros_env(self.domain_id), **self.env},
                                     stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` to the node's own process (by pid) and wait; kill it only if it does not exit in time."""
        if self.proc is None:
            return -1
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.returncode = self.proc.returncode
        for f in (self._out, self._err):
            f.close()
        return self.returncode

    def output(self) -> str:
        text = ""
        for path in (getattr(self, "stdout_path", None), getattr(self, "stderr_path", None)):
            if path is not None and Path(path).exists():
                text += Path(path).read_text(errors="replace")
        return text

    def wait_output(self, text: str, timeout: float) -> bool:
        """True once `text` is in the node's output; False after `timeout` s or if the node exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.alive():
                return text in self.output()
            time.sleep(0.1)
        return False

    def stderr(self) -> str:
        path = getattr(self, "stderr_path", None)
        return Path(path).read_text(errors="replace") if path is not None and Path(path).exists() else ""


class Collector:
    """Messages received on one topic, with their arrival time (time.time())."""

    def __init__(self) -> None:
        self.items: List[tuple] = []
        self._cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        with self._cond:
            self.items.append((time.time(), msg))
            self._cond.notify_all()

    def messages(self) -> List[Any]:
        with self._cond:
            return [m for _, m in self.items]

    def clear(self) -> None:
        with self._cond:
            self.items.clear()

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float) -> Optional[Any]:
        """The first message (new or already held) satisfying `predicate`, or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for _, msg in self.items[seen:]:
                    if predicate(msg):
                        return msg
                seen = len(self.items)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))


class RosClient:
    """A test-side rclpy node in its own context and domain, spun by a background thread."""

    def __init__(self, domain_id: int, name: str = "ovs_test_client") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.1)
        except (ExternalShutdownException, KeyboardInterrupt):
            pass
        except Exception:
            if self.context.ok():
                raise

    def subscribe(self, msg_type: Any, topic: str, reliable: bool = True, depth: int = 50,
                  transient_local: bool = False) -> Collector:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=depth,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE)
        collector = Collector()
        self.node.create_subscription(msg_type, topic, collector, qos)
        return collector

    def publisher(self, msg_type: Any, topic: str, reliable: bool = True, depth: int = 10) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=depth,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        return self.node.create_publisher(msg_type, topic, qos)

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 30.0, retry_s: float = 1.0) -> Any:
        """One service call that survives a lost request (re-sent every `retry_s`, doubling; first reply wins)."""
        from ovs_ros.ros_services import call_with_retries

        return call_with_retries(self.node, srv_type, name, request, timeout_s=timeout, retry_s=retry_s)

    def set_parameters(self, node_fqn: str, values: Dict[str, Any], timeout: float = 30.0) -> List[Any]:
        """rcl_interfaces/srv/SetParameters on `<node>/set_parameters`: one SetParametersResult per value."""
        from rcl_interfaces.srv import SetParameters

        request = SetParameters.Request()
        request.parameters = [to_parameter_msg(name, value) for name, value in values.items()]
        return list(self.call(SetParameters, f"{node_fqn}/set_parameters", request, timeout).results)

    def now_msg(self) -> Any:
        return self.node.get_clock().now().to_msg()

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=1.0)
        except Exception:
            pass
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)


def to_parameter_msg(name: str, value: Any) -> Any:
    """A rcl_interfaces/msg/Parameter; lists of ints stay INTEGER_ARRAY (to test type refusals)."""
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue

    v = ParameterValue()
    if isinstance(value, bool):
        v.type, v.bool_value = ParameterType.PARAMETER_BOOL, value
    elif isinstance(value, int):
        v.type, v.integer_value = ParameterType.PARAMETER_INTEGER, value
    elif isinstance(value, float):
        v.type, v.double_value = ParameterType.PARAMETER_DOUBLE, value
    elif isinstance(value, str):
        v.type, v.string_value = ParameterType.PARAMETER_STRING, value
    elif isinstance(value, (list, tuple)) and value and all(isinstance(x, int) for x in value):
        v.type, v.integer_array_value = ParameterType.PARAMETER_INTEGER_ARRAY, list(value)
    elif isinstance(value, (list, tuple)):
        v.type, v.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, [str(x) for x in value]
    else:
        raise TypeError(f"unsupported parameter value {value!r}")
    return ParameterMsg(name=name, value=v)


def synthetic_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A frame with a few flat-coloured rectangles on a gradient (so a segmenter has edges to find)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)),
                    np.full_like(xx, 96)], axis=2).astype(np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, max(height // 2, 1)), rng.integers(0, max(width // 2, 1))
        y1, x1 = y0 + rng.integers(height // 4, height // 2 + 1), x0 + rng.integers(width // 4, width // 2 + 1)
        rgb[y0:y1, x0:x1] = rng.integers(0, 256, 3, dtype=np.uint8)
    return rgb


def image_msg(rgb: np.ndarray, stamp: Any, frame_id: str = "camera", encoding: str = "rgb8") -> Any:
    from ovs_ros.image_codec import to_image_msg

    if encoding == "bgr8":
        rgb = np.ascontiguousarray(rgb[:, :, ::-1])
    msg = to_image_msg(rgb, encoding)
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def stamp_key(stamp: Any) -> tuple:
    return int(stamp.sec), int(stamp.nanosec)


def stamp_from_json(d: dict) -> tuple:
    return int(d["stamp"]["sec"]), int(d["stamp"]["nanosec"])


def diagnostics_values(msg: Any, node_fqn: str) -> Optional[Dict[str, str]]:
    """The values of the status that node `node_fqn` published (statuses are named `<node name>: <task>` as
    diagnostic_updater names them, so the fully qualified name is read from the `node` value)."""
    status = diagnostics_status(msg, node_fqn)
    return None if status is None else {kv.key: kv.value for kv in status.values}


def diagnostics_status(msg: Any, node_fqn: str) -> Optional[Any]:
    for status in msg.status:
        if any(kv.key == "node" and kv.value == node_fqn for kv in status.values):
            return status
    return None
