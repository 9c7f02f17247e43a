"""The ROS 2 adapter: a (lifecycle) node around `Segmenter` (house rule 4: thin; no model code here).

Threads: the executor handles the image callback (an O(1) check, then the frame goes into a one-frame slot: newest
wins, the displaced frame is counted as dropped), parameter requests and the diagnostics timer; one worker thread
takes the newest frame, decodes it, runs `Segmenter.segment`, encodes and publishes. So parameter calls are answered
while a frame is in flight. A frame that no enabled output has a subscriber for is counted, not segmented.

Life cycle: configure loads the segmenter and the vocabulary and creates the publishers; activate publishes
`~/labels`, starts the worker and subscribes; deactivate unsubscribes and joins the worker; cleanup releases the
model. With `autostart` (the default, for `ros2 run`) the node configures and activates itself at start-up.

Run: `ovs_node --ros-args --params-file config/ovs.yaml` or `python -m ovs_ros.node --ros-args ...`; see
docs/ros_interface.md for topics, parameters and the JSON schemas.
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from ovs_ros.image_codec import (
    COMPRESSED_PEEK_BYTES, ImageDecodeError, check_compressed_msg, check_image_msg, compressed_msg_to_rgb,
    image_msg_to_rgb, to_image_msg)
from ovs_ros.node_params import (
    INPUT_MODES, MAX_SEMANTIC_CLASSES, PARAMS_BY_NAME, VOCABULARY_PARAMS, check_all, check_choice, declare_all)
from ovs_ros.results import SEGMENTS_SCHEMA_VERSION
from ovs_ros.ros_session import ForcedShutdown, ros_args_errors, ros_session

try:  # rclpy >= Humble has managed nodes; keep a plain-node fallback for anything older
    from rclpy.lifecycle import LifecycleNode as _BaseNode
    from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn

    HAVE_LIFECYCLE = True
except ImportError:  # pragma: no cover - exercised only on old distros
    from enum import Enum

    from rclpy.node import Node as _BaseNode

    HAVE_LIFECYCLE = False
    LifecycleState = Any  # type: ignore[misc,assignment]

    class TransitionCallbackReturn(Enum):  # type: ignore[no-redef]
        SUCCESS = 0
        FAILURE = 1
        ERROR = 2

LABELS_SCHEMA_VERSION = 1
NODE_NAME = "ovs"
OUTPUTS = ("panoptic", "semantic", "segments", "overlay")  # each switchable with publish_<name>


# ------------------------------------------------------------------------------------------------- small helpers
@dataclass
class Frame:
    msg: Any  # sensor_msgs Image or CompressedImage
    received_mono: float  # time.monotonic() at the callback


class FrameSlot:
    """Holds the newest frame only; `put` returns True when it displaced a frame nobody took (a drop)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Optional[Frame] = None

    def put(self, frame: Frame) -> bool:
        with self._cond:
            dropped = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return dropped

    def take(self, timeout: float) -> Optional[Frame]:
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def clear(self) -> int:
        with self._cond:
            had = self._frame is not None
            self._frame = None
            self._cond.notify_all()
            return int(had)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class ThrottledLog:
    """One log line per key per `period_s`, with the number of repeats it swallowed."""

    def __init__(self, logger: Any, period_s: float) -> None:
        self._logger = logger
        self.period_s = period_s
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = collections.defaultdict(int)
        self._lock = threading.Lock()

    def __call__(self, key: str, text: str, level: str = "warning") -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] += 1
                return
            self._last[key] = now
            repeats = self._suppressed.pop(key, 0)
        if repeats:
            text += f" ({repeats} more like this in the last {now - last:.0f} s)"
        getattr(self._logger, level)(text)


class Stats:
    """Counters and sliding windows behind /diagnostics; written by the worker and the callbacks."""

    WINDOW = 200

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: Dict[str, int] = collections.defaultdict(int)
        self.received: Deque[float] = collections.deque(maxlen=self.WINDOW)
        self.processed: Deque[float] = collections.deque(maxlen=self.WINDOW)
        self.latency_ms: Deque[float] = collections.deque(maxlen=self.WINDOW)
        self.queue_age_ms: Deque[float] = collections.deque(maxlen=self.WINDOW)
        self.stage_ms: Dict[str, Deque[float]] = {}
        self.last_frame_mono: Optional[float] = None

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    def stage(self, name: str, ms: float) -> None:
        with self.lock:
            self.stage_ms.setdefault(name, collections.deque(maxlen=self.WINDOW)).append(ms)


def _rate(times: Sequence[float], now: float, horizon: float = 5.0) -> float:
    recent = [t for t in times if now - t <= horizon]
    if len(recent) < 2:
        return 0.0
    span = max(now - recent[0], 1e-6)
    return (len(recent) - 1) / span if now - recent[-1] < horizon else 0.0


def _summary(values: Sequence[float]) -> Tuple[float, float, float]:
    if not values:
        return 0.0, 0.0, 0.0
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(np.percentile(arr, 95)), float(arr.max())


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _release_accelerator_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # a broken CUDA context must not stop shutdown
            pass


def _quietly(destroy: Any, entity: Any) -> None:
    """Release path: one entity that fails to go (e.g. the context is already shut down) must not stop the rest."""
    try:
        destroy(entity)
    except Exception:
        pass


def _qos(reliability: str, depth: int, transient_local: bool = False) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE,
    )


def _stamp_dict(stamp: Any) -> dict:
    return {"sec": int(stamp.sec), "nanosec": int(stamp.nanosec)}


# ------------------------------------------------------------------------------------------------- JSON payloads
def segments_json(result: Any, header: Any, semantic_void_value: int) -> str:
    """The ~/segments payload (docs/ros_interface.md, schema `ovs_ros/segments` v`SEGMENTS_SCHEMA_VERSION`)."""
    offset = 1 if semantic_void_value == 0 else 0
    height, width = result.panoptic.shape[:2]
    return json.dumps({
        "schema": "ovs_ros/segments",
        "schema_version": SEGMENTS_SCHEMA_VERSION,
        "stamp": _stamp_dict(header.stamp),
        "frame_id": header.frame_id,
        "width": int(width),
        "height": int(height),
        "vocabulary_version": int(result.vocabulary_version),
        "semantic_void_value": int(semantic_void_value),
        "segments": [{
            "id": int(s.id),
            "label": s.label,
            "class_index": int(s.class_index),
            "semantic_value": int(s.class_index) + offset,
            "score": round(float(s.score), 5),
            "is_thing": bool(s.is_thing),
            "area": int(s.area),
            "bbox_xywh": [int(v) for v in s.bbox_xywh],
        } for s in result.segments],
    }, separators=(",", ":"))


def labels_json(vocabulary: Any, version: int, template_set: str, semantic_void_value: int, stamp: Any) -> str:
    """The ~/labels payload: class index -> name, synonyms, stuff flag, and the ~/semantic pixel value."""
    offset = 1 if semantic_void_value == 0 else 0
    return json.dumps({
        "schema": "ovs_ros/labels",
        "schema_version": LABELS_SCHEMA_VERSION,
        "stamp": _stamp_dict(stamp),
        "vocabulary_version": int(version),
        "template_set": template_set,
        "semantic_void_value": int(semantic_void_value),
        "semantic_offset": offset,
        "classes": [{
            "class_index": i,
            "semantic_value": i + offset,
            "name": entry.names[0],
            "synonyms": list(entry.names),
            "is_stuff": bool(entry.is_stuff),
        } for i, entry in enumerate(vocabulary.entries)],
    }, separators=(",", ":"))


def semantic_image(result: Any, semantic_void_value: int) -> np.ndarray:
    """[H, W] uint16: class index (+1 when void is 0), `semantic_void_value` where no segment."""
    sem = np.asarray(result.semantic)
    out = np.full(sem.shape, semantic_void_value, dtype=np.uint16)
    valid = (sem >= 0) & (sem != result.void_class_id) & (sem < MAX_SEMANTIC_CLASSES)
    out[valid] = (sem[valid] + (1 if semantic_void_value == 0 else 0)).astype(np.uint16)
    return out


# ------------------------------------------------------------------------------------------------- the node
class OvsNode(_BaseNode):
    """Open-vocabulary panoptic segmentation node (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        declare_all(self)
        self._log = self.get_logger()
        self._throttled = ThrottledLog(self._log, float(self._param("error_log_period_s")))
        self.stats = Stats()
        self._slot = FrameSlot()
        self._publish_lock = threading.Lock()  # orders frame publication against ~/labels updates
        # The ~/semantic void value in use; changed (with ~/labels) under _publish_lock, read there by the worker.
        self._void_value = int(self._param("semantic_void_value"))
        self._idle = False  # the last frame was skipped because no output had a subscriber
        self._segmenter: Any = None
        self._config_vocabulary: Any = None
        self._config_template_set: Optional[str] = None
        self._labels_version: Optional[int] = None
        self._last_swap_wall: Optional[float] = None
        self._last_swap_ms: Optional[float] = None
        self._vocab_source = "config"
        if self._param("vocabulary"):
            self._vocab_source = "vocabulary"
        elif self._param("vocabulary_file"):
            self._vocab_source = "vocabulary_file"
        self._pubs: Dict[str, Any] = {}
        self._diag_pub: Any = None
        self._diag_timer: Any = None
        self._sub: Any = None
        self._sub_group = MutuallyExclusiveCallbackGroup()
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._active = False
        self._active_since: Optional[float] = None
        self._warned_no_input = False
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ parameters
    def _param(self, name: str) -> Any:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:  # declared with a type but no value (an empty list)
            value = None
        if value is None and PARAMS_BY_NAME[name].default == "STRING_ARRAY":
            return []
        return value

    def _build_vocabulary(self, values: Dict[str, Any], source: str) -> Tuple[Any, Optional[str]]:
        """(Vocabulary or None = the segmenter config's, template set or None = keep) for the given parameter values;
        raises ValueError with a user-facing reason."""
        from ovs_ros.paths import resolve_data_path
        from ovs_ros.vocabulary import Vocabulary

        max_classes = int(values["max_vocabulary_size"])
        templates = values["templates"] or None
        if source == "vocabulary":
            classes = list(values["vocabulary"] or [])
            if not classes:
                raise ValueError("vocabulary is empty; give at least one class (or set vocabulary_file)")
            if len(classes) > max_classes:
                raise ValueError(f"vocabulary has {len(classes)} classes, more than max_vocabulary_size={max_classes}")
            return Vocabulary.from_strings(classes, list(values["stuff_classes"] or []),
                                           max_classes=max_classes), templates
        if source == "vocabulary_file":
            try:
                path = resolve_data_path(values["vocabulary_file"], "config/vocabularies")
            except (FileNotFoundError, OSError) as exc:
                raise ValueError(f"vocabulary_file: {exc}") from exc
            try:
                vocab = Vocabulary.from_yaml(path, max_classes=max_classes)
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"vocabulary_file {path}: cannot read it: {exc}") from exc
            return vocab, templates
        if self._config_vocabulary is not None and len(self._config_vocabulary) > max_classes:
            raise ValueError(f"the configured vocabulary has {len(self._config_vocabulary)} classes, more than "
                             f"max_vocabulary_size={max_classes}")
        return self._config_vocabulary, templates

    def _apply_vocabulary(self, vocab: Any, templates: Optional[str], void_value: Optional[int] = None) -> None:
        """Swap the segmenter's vocabulary (raises on failure, old one stays) and re-publish ~/labels (with
        `void_value` when it changes in the same request)."""
        segmenter = self._segmenter
        if segmenter is None:
            self._publish_labels(void_value)
            return
        if vocab is None:
            vocab = self._config_vocabulary
        start = time.perf_counter()
        segmenter.set_vocabulary(vocab, template_set=templates or self._config_template_set)
        self._last_swap_ms = (time.perf_counter() - start) * 1000.0
        self._last_swap_wall = time.time()
        labels = segmenter.vocabulary.labels
        shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
        self._log.info(f"vocabulary v{segmenter.vocabulary_version}: {len(labels)} classes ({shown}), "
                       f"templates {segmenter.template_set}, swap {self._last_swap_ms:.0f} ms")
        self._publish_labels(void_value)

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        values, source, touches_vocab = self._vocabulary_request(params)
        reason = self._refusal(params, source, touches_vocab)
        if reason:
            self._log.warning(f"parameter request refused: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        void_value = next((int(p.value) for p in params if p.name == "semantic_void_value"), None)
        if touches_vocab:
            try:
                vocab, templates = self._build_vocabulary(values, source)
                self._apply_vocabulary(vocab, templates, void_value)
            except ValueError as exc:  # VocabularyError is a ValueError
                self._log.warning(f"vocabulary request refused: {exc}")
                return SetParametersResult(successful=False, reason=str(exc))
            except Exception as exc:  # the segmenter failed to embed it (e.g. CUDA OOM): refuse, keep the old one
                self._log.error(f"vocabulary request failed in the segmenter: {type(exc).__name__}: {exc}")
                return SetParametersResult(successful=False, reason=f"segmenter failed: {type(exc).__name__}: {exc}")
            self._vocab_source = source
        elif void_value is not None:
            # ~/labels carries the pixel mapping: the new value and its ~/labels go out together, before any frame
            # that uses it. (get_parameter would still return the old value here: it is stored after we return.)
            self._publish_labels(void_value)
        for p in params:
            if p.name == "error_log_period_s":
                self._throttled.period_s = float(p.value)
        return SetParametersResult(successful=True)

    def _vocabulary_request(self, params: List[Parameter]) -> Tuple[Dict[str, Any], str, bool]:
        """(vocabulary parameter values after `params`, the vocabulary source after them, whether the vocabulary
        must be rebuilt)."""
        values = {name: self._param(name) for name in VOCABULARY_PARAMS}
        source = self._vocab_source
        touches_vocab = False
        for p in params:
            if p.name not in VOCABULARY_PARAMS:
                continue
            touches_vocab = touches_vocab or p.name != "max_vocabulary_size"
            values[p.name] = p.value if p.value is not None else ([] if p.name in ("vocabulary", "stuff_classes")
                                                                  else "")
            if p.name == "vocabulary":
                source = "vocabulary"
            elif p.name == "vocabulary_file":
                source = "vocabulary_file" if p.value else "config"
        return values, source, touches_vocab

    def _refusal(self, params: List[Parameter], source: str, touches_vocab: bool) -> Optional[str]:
        """Why `params` must be refused before anything is applied, or None. Requests that would be silently
        ignored are refused too, so `successful: true` always means "in effect"."""
        for p in params:
            reason = check_choice(p.name, p.value)
            if reason:
                return reason
            if p.name == "stuff_classes" and p.value and source != "vocabulary":
                where = (f"vocabulary_file {self._param('vocabulary_file')!r}" if source == "vocabulary_file"
                         else "the segmenter config")
                return (f"stuff_classes only applies to the 'vocabulary' parameter, but the active vocabulary comes "
                        f"from {where}; set vocabulary (with 'stuff:' entries, or together with stuff_classes)")
            if p.name == "max_vocabulary_size" and not touches_vocab and self._segmenter is not None:
                size = len(self._segmenter.vocabulary)
                if size > int(p.value):
                    return (f"max_vocabulary_size={p.value} is below the size of the current vocabulary ({size} "
                            "classes); set a smaller vocabulary first, or in the same request")
        return None

    # ------------------------------------------------------------------ life cycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._parameters_valid():
            return TransitionCallbackReturn.FAILURE
        from ovs_ros.segmenter import Segmenter

        overrides: Dict[str, Any] = {}
        if self._param("device"):
            overrides["device"] = self._param("device")
        if self._param("precision"):
            overrides["precision"] = self._param("precision")
        if int(self._param("input_short_side")) > 0:
            overrides["generator.input_short_side"] = int(self._param("input_short_side"))
        for name in ("object_mask_threshold", "overlap_threshold"):
            if float(self._param(name)) >= 0.0:
                overrides[name] = float(self._param(name))
        config = self._param("segmenter_config")
        try:
            start = time.perf_counter()
            segmenter = Segmenter.from_config(config, overrides)
            backend = self._param("backend")
            if backend and backend != getattr(segmenter, "backend", ""):
                raise ValueError(f"backend {backend!r} requested, but {config} runs {segmenter.backend!r}")
            if not segmenter.uses_pretrained_weights:
                self.get_logger().warning(
                    f"RANDOM WEIGHTS: segmenter config {config!r} loads no pretrained weights (the tiny demo model, "
                    "or weights not configured): masks and labels are meaningless. Set segmenter_config to a real "
                    "config (e.g. eva02_b16_swin_tiny) once its weights are downloaded (README 'Real weights').")
            self._config_vocabulary = segmenter.vocabulary
            self._config_template_set = segmenter.template_set
            self._segmenter = segmenter
            values = {name: self._param(name) for name in VOCABULARY_PARAMS}
            vocab, templates = self._build_vocabulary(values, self._vocab_source)
            if vocab is not None or templates:
                segmenter.set_vocabulary(vocab if vocab is not None else self._config_vocabulary,
                                         template_set=templates)
            self._last_swap_wall = time.time()
        except Exception as exc:
            self._log.error(f"configure failed: {type(exc).__name__}: {exc}")
            self._segmenter = None
            return TransitionCallbackReturn.FAILURE
        self._log.info(f"segmenter {config} ready in {time.perf_counter() - start:.1f} s: "
                       f"{json.dumps(self._describe())}")
        out_qos = _qos(self._param("output_reliability"), int(self._param("output_depth")))
        make = self.create_lifecycle_publisher if HAVE_LIFECYCLE else self.create_publisher
        self._pubs = {
            "panoptic": make(Image, "~/panoptic", out_qos),
            "semantic": make(Image, "~/semantic", out_qos),
            "segments": make(String, "~/segments", out_qos),
            "overlay": make(Image, "~/overlay", out_qos),
            "labels": make(String, "~/labels", _qos("reliable", 1, transient_local=True)),
        }
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(self._param("diagnostics_period")), self._publish_diagnostics)
        return TransitionCallbackReturn.SUCCESS

    def _parameters_valid(self) -> bool:
        """Check every value from the params file / `-p` (they bypass the set-parameters callback): an invalid one
        fails configure with the reason logged, before any model is loaded."""
        problems = check_all(self._param)
        if problems:
            self._log.error("configure failed: invalid parameter(s): " + "; ".join(problems))
            return False
        if self._param("stuff_classes") and self._vocab_source != "vocabulary":
            self._log.warning(f"stuff_classes {self._param('stuff_classes')} is ignored: it only applies to the "
                              "'vocabulary' parameter, and the vocabulary comes from "
                              f"{self._vocab_source.replace('config', 'the segmenter config')}")
        return True

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if HAVE_LIFECYCLE:
            ret = super().on_activate(state)  # enables the lifecycle publishers
            if ret != TransitionCallbackReturn.SUCCESS:
                return ret
        self._active = True
        self._active_since = time.monotonic()
        self._warned_no_input = False
        self._publish_labels()
        self._stop.clear()
        self._worker = threading.Thread(target=self._worker_loop, name="ovs_worker", daemon=True)
        self._worker.start()
        depth = int(self._param("input_depth"))
        qos = _qos(self._param("input_reliability"), depth)
        if self._param("input_mode") == "compressed":
            self._sub = self.create_subscription(CompressedImage, "image/compressed", self._on_compressed, qos,
                                                 callback_group=self._sub_group)
        else:
            self._sub = self.create_subscription(Image, "image", self._on_image, qos, callback_group=self._sub_group)
        self._log.info(f"active: subscribed to {self._sub.topic_name} "
                       f"({self._param('input_reliability')}, depth {depth})")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        if HAVE_LIFECYCLE:
            return super().on_deactivate(state)
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _deactivate(self) -> None:
        self._active = False
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        self._stop.set()
        self._slot.wake()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            if self._worker.is_alive():
                self._log.warning("worker thread still busy after 30 s; leaving it (daemon)")
            self._worker = None
        self._slot.clear()

    def _release(self) -> None:
        """Stop everything and free the model: safe to call in any state, more than once."""
        self._deactivate()
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        # Lifecycle publishers must leave the node's managed entities too, or every cleanup/configure cycle adds
        # five more that each later transition still visits.
        destroy_managed = self.destroy_lifecycle_publisher if HAVE_LIFECYCLE else self.destroy_publisher
        for pub in self._pubs.values():
            _quietly(destroy_managed, pub)
        if self._diag_pub is not None:
            _quietly(self.destroy_publisher, self._diag_pub)
        self._pubs = {}
        self._diag_pub = None
        if self._segmenter is not None:
            self._segmenter = None
            self._config_vocabulary = None
            _release_accelerator_memory()
        self._labels_version = None

    def autostart(self) -> bool:
        """Configure and activate (plain-node mode). Returns False when configuring failed."""
        if HAVE_LIFECYCLE:
            self.trigger_configure()
            if self._segmenter is None:
                return False
            self.trigger_activate()
            return self._active
        if self.on_configure(None) != TransitionCallbackReturn.SUCCESS:
            return False
        return self.on_activate(None) == TransitionCallbackReturn.SUCCESS

    def shutdown(self) -> None:
        """Ctrl-C / SIGTERM path: join the worker, release the model."""
        self._release()

    # ------------------------------------------------------------------ input
    def _on_image(self, msg: Image) -> None:
        self._receive(msg, compressed=False)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._receive(msg, compressed=True)

    def _receive(self, msg: Any, compressed: bool) -> None:
        now = time.monotonic()
        with self.stats.lock:
            self.stats.received.append(now)
            self.stats.counters["frames_received"] += 1
            self.stats.last_frame_mono = now
        try:
            if compressed:
                check_compressed_msg(msg, int(self._param("max_image_pixels")), peek_bytes=COMPRESSED_PEEK_BYTES)
            else:
                check_image_msg(msg, int(self._param("max_image_pixels")))
        except ImageDecodeError as exc:
            self._bad_input(exc.reason, str(exc), msg)
            return
        if self._slot.put(Frame(msg, now)):
            self.stats.count("dropped_frames")

    def _bad_input(self, reason: str, text: str, msg: Any) -> None:
        self.stats.count("bad_input")
        self.stats.count(f"bad_input_{reason}")
        total = self.stats.counters["bad_input"]
        self._throttled(f"bad_input_{reason}",
                        f"frame (stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}, frame_id "
                        f"'{msg.header.frame_id}') skipped: {text} [bad frames so far: {total}]")

    # ------------------------------------------------------------------ worker
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.take(timeout=0.25)
            if frame is None or self._stop.is_set():
                continue
            try:
                self._process(frame)
            except Exception as exc:  # never let one frame kill the worker
                self.stats.count("internal_errors")
                if not rclpy.ok(context=self.context):
                    return
                self._throttled("internal", f"frame skipped: internal error {type(exc).__name__}: {exc}", "error")

    def _wanted_outputs(self) -> Tuple[str, ...]:
        """The outputs switched on that have a subscriber right now."""
        pubs = self._pubs
        return tuple(name for name in OUTPUTS if name in pubs and self._param(f"publish_{name}")
                     and pubs[name].get_subscription_count() > 0)

    def _skip_unwatched(self) -> bool:
        """True (frame counted as skipped) when no output would be published: nothing is computed for nobody. Logs
        once per idle period, not per frame."""
        idle = not self._wanted_outputs()
        if idle:
            self.stats.count("skipped_no_subscribers")
        if idle != self._idle:
            self._idle = idle
            self._log.info("no subscriber on any enabled output: frames are counted, not segmented" if idle
                           else "an output has a subscriber again: segmenting")
        return idle

    def _process(self, frame: Frame) -> None:
        if self._skip_unwatched():
            return
        start = time.monotonic()
        stats = self.stats
        with stats.lock:
            stats.queue_age_ms.append((start - frame.received_mono) * 1000.0)
        msg = frame.msg
        max_pixels = int(self._param("max_image_pixels"))
        try:
            if isinstance(msg, CompressedImage):
                rgb = compressed_msg_to_rgb(msg, max_pixels)
            else:
                rgb = image_msg_to_rgb(msg, max_pixels)
        except ImageDecodeError as exc:
            self._bad_input(exc.reason, str(exc), msg)
            return
        t_decoded = time.monotonic()
        segmenter = self._segmenter
        if segmenter is None:
            return
        try:
            result = segmenter.segment(rgb)
        except ValueError as exc:  # the segmenter refused the image (size, shape)
            self._segmenter_refused(str(exc), msg)
            return
        except Exception as exc:
            oom = _is_out_of_memory(exc)
            stats.count("cuda_oom" if oom else "segmenter_errors")
            if oom:
                _release_accelerator_memory()
            self._throttled("oom" if oom else "segmenter",
                            f"frame {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} skipped: segmenter "
                            f"{'ran out of memory' if oom else 'failed'}: {type(exc).__name__}: {exc}", "error")
            return
        t_segmented = time.monotonic()
        self._publish_result(msg.header, rgb, result)
        done = time.monotonic()
        now_ros = self.get_clock().now().nanoseconds
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with stats.lock:
            stats.counters["frames_processed"] += 1
            stats.processed.append(done)
            if stamp_ns > 0:
                stats.latency_ms.append((now_ros - stamp_ns) / 1e6)
            for name, ms in (("decode", (t_decoded - start) * 1e3), ("segment", (t_segmented - t_decoded) * 1e3),
                             ("encode_publish", (done - t_segmented) * 1e3),
                             ("receive_to_publish", (done - frame.received_mono) * 1e3)):
                stats.stage_ms.setdefault(name, collections.deque(maxlen=stats.WINDOW)).append(ms)
            for name, ms in (result.timings_ms or {}).items():
                stats.stage_ms.setdefault(f"segmenter.{name}",
                                          collections.deque(maxlen=stats.WINDOW)).append(float(ms))

    def _segmenter_refused(self, text: str, msg: Any) -> None:
        self.stats.count("bad_input")
        self.stats.count("bad_input_refused_by_segmenter")
        self._throttled("segmenter_refused",
                        f"frame {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} refused by the segmenter: {text}")

    def _publish_result(self, header: Any, rgb: np.ndarray, result: Any) -> None:
        pubs = self._pubs
        if not pubs:
            return
        wanted = self._wanted_outputs()  # again: a switch or a subscriber may have changed during segmentation
        with self._publish_lock:
            if result.vocabulary_version != self._labels_version:
                # Computed with a vocabulary whose ~/labels is no longer (or not yet) out: never publish it.
                self.stats.count("dropped_stale_vocabulary")
                return
            void_value = self._void_value  # the value the latest ~/labels states
            if "panoptic" in wanted:
                pubs["panoptic"].publish(to_image_msg(np.asarray(result.panoptic, dtype=np.int32), "32SC1", header))
            if "semantic" in wanted:
                pubs["semantic"].publish(to_image_msg(semantic_image(result, void_value), "16UC1", header))
            if "segments" in wanted:
                pubs["segments"].publish(String(data=segments_json(result, header, void_value)))
            if "overlay" in wanted:
                from ovs_ros.overlay import render_overlay

                overlay = render_overlay(rgb, result, alpha=float(self._param("overlay_alpha")),
                                         draw_labels=bool(self._param("overlay_draw_labels")))
                self.stats.count("overlay_rendered")
                pubs["overlay"].publish(to_image_msg(overlay, "rgb8", header))

    def _publish_labels(self, void_value: Optional[int] = None) -> None:
        """(Re-)publish ~/labels. A new `void_value` is set in the same critical section as the publish, so no
        frame goes out with a pixel mapping that the latest ~/labels does not state."""
        with self._publish_lock:
            if void_value is not None:
                self._void_value = int(void_value)
            segmenter, pub = self._segmenter, self._pubs.get("labels")
            if segmenter is None or pub is None:
                return
            version = segmenter.vocabulary_version
            pub.publish(String(data=labels_json(segmenter.vocabulary, version, segmenter.template_set,
                                                self._void_value, self.get_clock().now().to_msg())))
            self._labels_version = version

    # ------------------------------------------------------------------ diagnostics
    def _describe(self) -> dict:
        s = self._segmenter
        if s is None:
            return {}
        return {"backend": getattr(s, "backend", "?"), "device": str(getattr(s, "device", "?")),
                "template_set": getattr(s, "template_set", "?"), "vocabulary_size": len(s.vocabulary),
                "pretrained_weights": bool(getattr(s, "uses_pretrained_weights", False))}

    def diagnostics_values(self) -> Tuple[int, str, Dict[str, str]]:
        now = time.monotonic()
        stats = self.stats
        with stats.lock:
            counters = dict(stats.counters)
            fps_in = _rate(list(stats.received), now)
            fps_out = _rate(list(stats.processed), now)
            lat = _summary(list(stats.latency_ms))
            age = _summary(list(stats.queue_age_ms))
            stages = {name: _summary(list(v))[0] for name, v in stats.stage_ms.items()}
            last_frame = stats.last_frame_mono
        values: Dict[str, str] = {
            "state": "active" if self._active else ("inactive" if self._segmenter is not None else "unconfigured"),
            "fps": f"{fps_out:.2f}",
            "input_fps": f"{fps_in:.2f}",
            "latency_ms_mean": f"{lat[0]:.1f}",
            "latency_ms_p95": f"{lat[1]:.1f}",
            "latency_ms_max": f"{lat[2]:.1f}",
            "queue_age_ms_mean": f"{age[0]:.1f}",
            "queue_age_ms_max": f"{age[2]:.1f}",
        }
        for name in ("frames_received", "frames_processed", "skipped_no_subscribers", "overlay_rendered",
                     "dropped_frames", "dropped_stale_vocabulary", "bad_input", "segmenter_errors", "cuda_oom",
                     "internal_errors"):
            values[name] = str(counters.get(name, 0))
        for name, n in sorted(counters.items()):
            if name.startswith("bad_input_"):
                values[name] = str(n)
        for name, ms in sorted(stages.items()):
            values[f"stage_ms.{name}"] = f"{ms:.2f}"
        values.update({k: str(v) for k, v in self._describe().items()})
        segmenter = self._segmenter
        if segmenter is not None:
            values["vocabulary_version"] = str(segmenter.vocabulary_version)
        if self._last_swap_wall is not None:
            values["last_vocabulary_swap"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self._last_swap_wall))
            values["last_vocabulary_swap_age_s"] = f"{time.time() - self._last_swap_wall:.1f}"
        if self._last_swap_ms is not None:
            values["last_vocabulary_swap_ms"] = f"{self._last_swap_ms:.1f}"
        level, message = DiagnosticStatus.OK, "ok"
        warn_after = float(self._param("no_input_warning_s"))
        since = last_frame if last_frame is not None else self._active_since
        if self._active and warn_after > 0 and since is not None and now - since > warn_after:
            level, message = DiagnosticStatus.WARN, f"no input frame for {now - since:.0f} s (check topic and QoS)"
            if not self._warned_no_input:
                self._warned_no_input = True
                sub = self._sub.topic_name if self._sub is not None else "image"
                self._log.warning(f"{message}: subscribed to {sub} with {self._param('input_reliability')} QoS")
        elif last_frame is not None and now - last_frame <= warn_after:
            self._warned_no_input = False
        if counters.get("segmenter_errors", 0) + counters.get("cuda_oom", 0) and fps_out == 0.0 and fps_in > 0.0:
            level, message = DiagnosticStatus.ERROR, "segmenter failing on every frame"
        elif not self._active:
            level, message = DiagnosticStatus.WARN, values["state"]
        return level, message, values

    def _publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        level, message, values = self.diagnostics_values()
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: segmentation",
                                  message=message, hardware_id=values.get("device", ""))
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


# ------------------------------------------------------------------------------------------------- entry point
def _parse_cli(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    from rclpy.utilities import remove_ros_args

    parser = argparse.ArgumentParser(
        prog="ovs_node", description="Open-vocabulary panoptic segmentation node. ROS arguments go after --ros-args, "
        "e.g. --ros-args --params-file config/ovs.yaml -p vocabulary:=\"['red mug', 'laptop']\".")
    parser.add_argument("--managed", action="store_true",
                        help="start unconfigured and wait for lifecycle transitions (same as -p autostart:=false)")
    parser.add_argument("--name", default=NODE_NAME, help=f"node name (default {NODE_NAME})")
    parser.add_argument("--input-mode", choices=("",) + INPUT_MODES, default="",
                        help="override the input_mode parameter (raw or compressed); empty = keep the params "
                        "file's (the launch file passes its input_mode argument this way)")
    return parser.parse_args(remove_ros_args(list(argv))[1:]), list(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `ovs_node` and `python -m ovs_ros.node`. Exit code 0 after Ctrl-C or SIGTERM, 1 when the node
    could not start (a bad parameter or segmenter config), 128 + N after a second signal N (start-up abandoned)."""
    argv = list(sys.argv if argv is None else argv)
    try:
        cli, ros_argv = _parse_cli(argv)
    except ros_args_errors() as exc:  # e.g. a params file that is missing or not valid YAML
        print(f"ovs_node: unusable --ros-args: {exc}", file=sys.stderr)
        return 1
    with ros_session(ros_argv) as stop:
        try:
            return _run_node(cli, stop)
        except ForcedShutdown as exc:  # yet another signal while _run_node was already on its way out
            return exc.exit_code


def _make_node(cli: argparse.Namespace) -> Optional[OvsNode]:
    """The node, or None (one fatal log line, no traceback) when a value from the params file or `-p` has the wrong
    type or is out of range: rclpy raises that while the parameter is declared."""
    overrides = [Parameter("autostart", value=False)] if cli.managed else []
    if cli.input_mode:
        overrides.append(Parameter("input_mode", value=cli.input_mode))
    try:
        return OvsNode(cli.name, parameter_overrides=overrides)
    except ParameterException as exc:
        rclpy.logging.get_logger(cli.name).fatal(f"invalid parameter: {exc}; exiting")
        return None


def _start(node: OvsNode, stop: threading.Event) -> int:
    """Configure and activate unless managed (or already asked to stop); 1 when that failed."""
    if not node.get_parameter("autostart").value:
        if HAVE_LIFECYCLE:
            node.get_logger().info("managed mode: waiting for configure/activate (lifecycle services)")
        return 0
    if not stop.is_set() and not node.autostart():
        node.get_logger().fatal("could not start (see the error above); exiting")
        return 1
    return 0


def _run_node(cli: argparse.Namespace, stop: threading.Event) -> int:
    """Spin until a signal (`stop`) or a failed start; the worker is joined and the model released here, except
    after a second signal, which abandons a start-up or shutdown that takes too long."""
    node = _make_node(cli)
    if node is None:
        return 1
    code = 0
    forced = False
    try:
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        code = _start(node, stop)
        while code == 0 and not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.2)
        if stop.is_set():
            node.get_logger().info("shutting down (signal)")
    except ForcedShutdown as exc:
        node.get_logger().warning(f"{exc}: exiting now, without waiting for the model or the worker")
        code, forced = exc.exit_code, True
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if not forced:
            node.shutdown()
            _quietly(OvsNode.destroy_node, node)
    return code


if __name__ == "__main__":
    sys.exit(main())
