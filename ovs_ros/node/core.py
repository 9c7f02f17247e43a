"""The ROS 2 adapter: a lifecycle node composed of small helpers around the plain-Python `Segmenter` (house rule
4: no model code here). Inputs: input.py; outputs and their payloads: outputs.py, payloads.py; vocabulary
parameters: vocabulary_params.py; health: health.py, diagnostics.py; entry point: main.py.

Threads and callback groups (nothing waits behind a vocabulary change):
  - image (and camera_info) callbacks: own group; an O(1) check, then the frame goes into a one-frame slot (newest
    wins, a displaced frame is counted as dropped);
  - one worker thread takes the newest frame, decodes and segments it, and hands the result to the publisher thread
    (publisher.py: one pending result, newest wins), which encodes and publishes it while the worker segments the
    next frame (`publisher_thread: false`: the worker publishes itself);
  - parameter services: the node's default group, made reentrant, so a GetParameters is answered while a
    SetParameters encodes a large vocabulary (the encode blocks only the request that asked for it; vocabulary
    requests are serialised by a lock);
  - lifecycle services: own group; /diagnostics: own group, on a steady-clock timer (it runs under use_sim_time
    without /clock) from construction on, so a managed node reports before it is configured.

Life cycle: configure loads the segmenter and the vocabulary and creates the publishers; activate publishes
`~/labels`, starts the publisher and the worker and subscribes; deactivate unsubscribes, joins the worker, then
drains and joins the publisher (nothing is published after it returns); cleanup releases the
model. With `autostart` (the default, for `ros2 run`) the node configures and activates itself at start-up. Every
transition that raises is logged with its traceback and fails (rclpy would swallow it silently).
"""
from __future__ import annotations

import functools
import gc
import json
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage

from ovs_ros.image_codec import (
    COMPRESSED_PEEK_BYTES, ImageDecodeError, check_compressed_msg, check_image_msg, compressed_msg_to_rgb,
    image_msg_to_rgb)
from ovs_ros.node.diagnostics import InputView, hardware_name, health
from ovs_ros.node.frames import Frame, FrameSlot
from ovs_ros.node.health import InputLossTracker, Stats, ThrottledLog
from ovs_ros.node.input import InputSubscription
from ovs_ros.node.outputs import VISION_MSGS_OUTPUTS, OutputPublishers
from ovs_ros.node.params import MAX_SEMANTIC_CLASSES, PARAMS_BY_NAME, check_all, declare_all
from ovs_ros.node.payloads import load_vision_msgs
from ovs_ros.node.publisher import ResultPublisher
from ovs_ros.node.vocabulary_params import VocabularyParameters, vocabulary_strings

from rclpy.node import Node

try:  # rclpy >= Humble has managed nodes; keep a plain-node fallback for anything older
    from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn

    class _BaseNode(LifecycleNodeMixin, Node):
        """rclpy's LifecycleNode, with the lifecycle services in a callback group of their own (LifecycleNode does
        not pass one through to its mixin, so they would share the parameter services' group)."""

        def __init__(self, node_name: str, *, lifecycle_callback_group: Any = None, **kwargs: Any) -> None:
            Node.__init__(self, node_name, **kwargs)
            LifecycleNodeMixin.__init__(self, callback_group=lifecycle_callback_group)

    HAVE_LIFECYCLE = True
except ImportError:  # pragma: no cover - exercised only on old distros
    from enum import Enum

    class _BaseNode(Node):  # type: ignore[no-redef]
        def __init__(self, node_name: str, *, lifecycle_callback_group: Any = None, **kwargs: Any) -> None:
            super().__init__(node_name, **kwargs)

    HAVE_LIFECYCLE = False
    LifecycleState = Any  # type: ignore[misc,assignment]

    class TransitionCallbackReturn(Enum):  # type: ignore[no-redef]
        SUCCESS = 0
        FAILURE = 1
        ERROR = 2

NODE_NAME = "ovs"


@dataclass
class _Segmented:
    """A segmented frame on its way from the worker to the publisher."""

    frame: Frame
    rgb: np.ndarray
    result: Any
    segment_s: float


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


def _quietly(destroy: Callable[[Any], Any], entity: Any) -> None:
    """Release path: one entity that fails to go (e.g. the context is already shut down) must not stop the rest."""
    try:
        destroy(entity)
    except Exception:
        pass


def _logged_transition(name: str) -> Callable:
    """A lifecycle callback that raises is logged with its traceback and returns FAILURE, after `_undo_<name>`
    (rclpy's own handler returns ERROR without a word)."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(self: "OvsNode", state: Any) -> TransitionCallbackReturn:
            try:
                return fn(self, state)
            except Exception as exc:
                self.get_logger().error(f"{name} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                undo = getattr(self, f"_undo_{name}", None)
                if undo is not None:
                    _quietly(lambda _: undo(), None)
                return TransitionCallbackReturn.FAILURE
        return run
    return wrap


class OvsNode(_BaseNode):
    """Open-vocabulary panoptic segmentation node (see the module docstring and docs/ros_interface.md)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, lifecycle_callback_group=MutuallyExclusiveCallbackGroup(), **kwargs)
        declare_all(self)
        self._log = self.get_logger()
        self._throttled = ThrottledLog(self._log, float(self._param("error_log_period_s")))
        self.stats = Stats()
        self.loss = InputLossTracker(float(self._param("input_loss_window_s")))
        self._slot = FrameSlot()
        self._publish_lock = threading.Lock()  # orders frame publication against ~/labels updates
        self._vocab_lock = threading.Lock()  # one vocabulary change at a time
        self._internal = threading.local()  # set while the node writes its own parameters
        # The ~/semantic void value and encoding in use; changed (with ~/labels) under _publish_lock.
        self._void_value = int(self._param("semantic_void_value"))
        self._encoding = str(self._param("semantic_encoding"))
        self._idle = False  # the last frame was skipped because no output had a subscriber
        self._segmenter: Any = None
        self._vocab = VocabularyParameters(self._param)
        self._labels_version: Optional[int] = None
        self._last_swap_wall: Optional[float] = None
        self._last_swap_ms: Optional[float] = None
        self._vision_msgs = load_vision_msgs()
        self._outputs: Optional[OutputPublishers] = None
        self._input: Optional[InputSubscription] = None
        self._sub_group = MutuallyExclusiveCallbackGroup()
        self._worker: Optional[threading.Thread] = None
        self._publisher: Optional[ResultPublisher] = None
        self._stop = threading.Event()
        self._active = False
        self._active_since: Optional[float] = None
        self._first_frame_logged = False
        self._health_message: Optional[str] = None
        self._hardware_id = ""
        self._last_label_info = 0.0
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(self._param("diagnostics_period")), self._tick,
                                             callback_group=MutuallyExclusiveCallbackGroup(),
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))

    @property
    def default_callback_group(self) -> Any:
        """Reentrant, so parameter services (created in this group by rclpy) answer while one of them encodes."""
        group = self.__dict__.get("_ovs_default_group")
        if group is None:
            group = self.__dict__["_ovs_default_group"] = ReentrantCallbackGroup()
        return group

    # ------------------------------------------------------------------ parameters
    def _param(self, name: str) -> Any:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:  # only before declare_all has given it its typed empty value
            value = None
        if value is None and PARAMS_BY_NAME[name].default == "STRING_ARRAY":
            return []
        return value

    def _on_set_parameters(self, params: List[Parameter]) -> SetParametersResult:
        if getattr(self._internal, "writing", False):
            return SetParametersResult(successful=True)  # the node reading back its own state
        values, source, touches_vocab = self._vocab.request(params)
        segmenter = self._segmenter
        reason = self._vocab.refusal(params, source, touches_vocab,
                                     len(segmenter.vocabulary) if segmenter is not None else None)
        if reason:
            self._log.warning(f"parameter request refused: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        void_value = next((int(p.value) for p in params if p.name == "semantic_void_value"), None)
        encoding = next((str(p.value) for p in params if p.name == "semantic_encoding"), None)
        if touches_vocab:
            with self._vocab_lock:
                try:
                    vocab, templates = self._vocab.build(values, source, encoding or self._encoding)
                    self._apply_vocabulary(vocab, templates, void_value, encoding)
                except ValueError as exc:  # VocabularyError is a ValueError
                    self._log.warning(f"vocabulary request refused: {exc}")
                    return SetParametersResult(successful=False, reason=str(exc))
                except Exception as exc:  # the segmenter failed to embed it (e.g. CUDA OOM): refuse, keep the old
                    self._log.error(f"vocabulary request failed in the segmenter: {type(exc).__name__}: {exc}")
                    return SetParametersResult(successful=False,
                                               reason=f"segmenter failed: {type(exc).__name__}: {exc}")
                self._vocab.source = source
                self._internal.readback = source != "vocabulary"
        elif void_value is not None or encoding is not None:
            # ~/labels carries the pixel mapping: the new value and its ~/labels go out together, before any frame
            # that uses it. (get_parameter would still return the old value here: it is stored after we return.)
            self._publish_labels(void_value, encoding)
        for p in params:
            if p.name == "error_log_period_s":
                self._throttled.period_s = float(p.value)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: List[Parameter]) -> None:
        if getattr(self._internal, "readback", False):
            self._internal.readback = False
            self._read_back_vocabulary()

    def _read_back_vocabulary(self) -> None:
        """`vocabulary` reads back the classes in use, also when they come from a file or the config."""
        segmenter = self._segmenter
        if segmenter is None or self._vocab.source == "vocabulary":
            return
        self._internal.writing = True
        try:
            self.set_parameters([Parameter("vocabulary", Parameter.Type.STRING_ARRAY,
                                           vocabulary_strings(segmenter.vocabulary))])
        finally:
            self._internal.writing = False

    def _apply_vocabulary(self, vocab: Any, templates: Optional[str], void_value: Optional[int] = None,
                          encoding: Optional[str] = None) -> None:
        """Swap the segmenter's vocabulary (raises on failure, old one stays) and re-publish ~/labels."""
        segmenter = self._segmenter
        if segmenter is None:
            self._publish_labels(void_value, encoding)
            return
        if vocab is None:
            vocab = self._vocab.config_vocabulary
        start = time.perf_counter()
        segmenter.set_vocabulary(vocab, template_set=templates or self._vocab.config_template_set)
        self._last_swap_ms = (time.perf_counter() - start) * 1000.0
        self._last_swap_wall = time.time()
        labels = segmenter.vocabulary.labels
        shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
        self._log.info(f"vocabulary v{segmenter.vocabulary_version}: {len(labels)} classes ({shown}), "
                       f"templates {segmenter.template_set}, swap {self._last_swap_ms:.0f} ms")
        self._publish_labels(void_value, encoding)

    # ------------------------------------------------------------------ life cycle
    @_logged_transition("configure")
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        problems = check_all(self._param)
        if problems:
            self._log.error("configure failed: invalid parameter(s): " + "; ".join(problems))
            return TransitionCallbackReturn.FAILURE
        if self._param("stuff_classes") and self._vocab.source != "vocabulary":
            self._log.warning(f"stuff_classes {self._param('stuff_classes')} is ignored: it only applies to the "
                              "'vocabulary' parameter, and the vocabulary comes from "
                              f"{self._vocab.source.replace('config', 'the segmenter config')}")
        config = self._param("segmenter_config")
        start = time.perf_counter()
        try:
            segmenter = self._load_segmenter(config)
        except Exception as exc:
            self._log.error(f"configure failed: {type(exc).__name__}: {exc}")
            self._segmenter = None
            return TransitionCallbackReturn.FAILURE
        self._hardware_id = hardware_name(str(segmenter.device))
        self._log.info(f"segmenter {config} ready in {time.perf_counter() - start:.1f} s: "
                       f"{json.dumps(self._describe())}")
        self._outputs = OutputPublishers(self, self._param("output_reliability"), int(self._param("output_depth")),
                                         self._vision_msgs, HAVE_LIFECYCLE)
        if self._vision_msgs is None and any(self._param(f"publish_{n}") for n in VISION_MSGS_OUTPUTS):
            self._log.info("vision_msgs is not installed: ~/detections and ~/label_info are off (~/segments and "
                           "~/labels carry the same as JSON)")
        self._read_back_vocabulary()
        return TransitionCallbackReturn.SUCCESS

    def _load_segmenter(self, config: str) -> Any:
        from ovs_ros.segmenter import Segmenter

        # The node's max_vocabulary_size is the one vocabulary limit: the segmenter's own is opened to the range.
        overrides: Dict[str, Any] = {"max_vocabulary_classes": MAX_SEMANTIC_CLASSES}
        if self._param("device"):
            overrides["device"] = self._param("device")
        if self._param("precision"):
            overrides["precision"] = self._param("precision")
        if int(self._param("input_short_side")) > 0:
            overrides["generator.input_short_side"] = int(self._param("input_short_side"))
        for name in ("object_mask_threshold", "overlap_threshold"):
            if float(self._param(name)) >= 0.0:
                overrides[name] = float(self._param(name))
        segmenter = Segmenter.from_config(config, overrides)
        backend = self._param("backend")
        if backend and backend != getattr(segmenter, "backend", ""):
            raise ValueError(f"backend {backend!r} requested, but {config} runs {segmenter.backend!r}")
        if not segmenter.uses_pretrained_weights:
            self._log.warning(
                f"RANDOM WEIGHTS: segmenter config {config!r} loads no pretrained weights (the tiny demo model, "
                "or weights not configured): masks and labels are meaningless. Set segmenter_config to a real "
                "config (e.g. eva02_b16_swin_tiny) once its weights are downloaded (README 'Real weights').")
        self._vocab.config_vocabulary = segmenter.vocabulary
        self._vocab.config_template_set = segmenter.template_set
        self._segmenter = segmenter
        values = {name: self._param(name) for name in self._vocab.request([])[0]}
        vocab, templates = self._vocab.build(values, self._vocab.source, self._encoding)
        if self._vocab.source != "config" or templates:  # the config's is in place already (no second version)
            segmenter.set_vocabulary(vocab if vocab is not None else self._vocab.config_vocabulary,
                                     template_set=templates)
        self._last_swap_wall = time.time()
        return segmenter

    def _undo_configure(self) -> None:
        self._release()

    @_logged_transition("activate")
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if HAVE_LIFECYCLE:
            ret = super().on_activate(state)  # enables the lifecycle publishers
            if ret != TransitionCallbackReturn.SUCCESS:
                return ret
        self._active = True
        self._active_since = time.monotonic()
        self._first_frame_logged = False
        self._publish_labels()
        self._stop.clear()
        if bool(self._param("publisher_thread")):
            self._publisher = ResultPublisher(self._finish, lambda: self.stats.count("dropped_results"),
                                              self._publish_failed)
        self._worker = threading.Thread(target=self._worker_loop, name="ovs_worker", daemon=True)
        self._worker.start()
        self.loss.forget_publishers()
        self._input = InputSubscription(self, self._param("input_mode"), self._param("input_reliability"),
                                        int(self._param("input_depth")), self._receive, self._sub_group, self._log)
        self._input.start(with_camera_info=bool(self._param("publish_camera_info")))
        self._log.info(f"active: subscribed to {self._input.describe()}")
        return TransitionCallbackReturn.SUCCESS

    def _undo_activate(self) -> None:
        self._deactivate()

    @_logged_transition("deactivate")
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._log.info("deactivated: unsubscribed, model kept")
        if HAVE_LIFECYCLE:
            return super().on_deactivate(state)
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition("cleanup")
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._log.info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition("shutdown")
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    @_logged_transition("error")
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _deactivate(self) -> None:
        self._active = False
        if self._input is not None:
            self._input.stop()
            self._input = None
        self._stop.set()
        self._slot.wake()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            if self._worker.is_alive():
                self._log.warning("worker thread still busy after 30 s; leaving it (daemon)")
            self._worker = None
        if self._publisher is not None:  # after the worker: its last result is published, then nothing more
            if not self._publisher.stop(timeout=30.0):
                self._log.warning("publisher thread still busy after 30 s; leaving it (daemon)")
            self._publisher = None
        self._slot.clear()

    def _release(self) -> None:
        """Stop everything and free the model: safe to call in any state, more than once."""
        self._deactivate()
        if self._outputs is not None:
            self._outputs.release(_quietly)
            self._outputs = None
        if self._segmenter is not None:
            self._segmenter = None
            self._vocab.config_vocabulary = None
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
        """Ctrl-C / SIGTERM path: join the worker, release the model, stop the diagnostics."""
        self._release()
        _quietly(self.destroy_timer, self._diag_timer)

    # ------------------------------------------------------------------ input
    def _receive(self, msg: Any, compressed: bool, info: Optional[dict] = None) -> None:
        now = time.monotonic()
        self.loss.record(info, now)
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
        outputs = self._outputs
        if outputs is None:
            return ()
        return outputs.wanted(lambda name: bool(self._param(f"publish_{name}")))

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
        stats.stage("decode", (t_decoded - start) * 1e3)
        stats.stage("segment", (t_segmented - t_decoded) * 1e3)
        job = _Segmented(frame, rgb, result, t_segmented - t_decoded)
        publisher = self._publisher
        if publisher is None:
            self._finish(job)
        else:
            publisher.submit(job)

    def _finish(self, job: "_Segmented") -> None:
        """Encode and publish one segmented frame, then account it (the publisher thread, or the worker)."""
        stats, msg, rgb, result = self.stats, job.frame.msg, job.rgb, job.result
        begin = time.monotonic()
        published = self._publish_result(msg.header, rgb, result)
        done = time.monotonic()
        if published and not self._first_frame_logged:
            self._first_frame_logged = True
            self._log.info(f"first frame segmented: {rgb.shape[1]}x{rgb.shape[0]} in "
                           f"{job.segment_s * 1e3:.0f} ms, {len(result.segments)} segments; "
                           f"publishing {', '.join(published)}")
        now_ros = self.get_clock().now().nanoseconds
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with stats.lock:
            stats.counters["frames_processed"] += 1
            stats.processed.append(done)
            if stamp_ns > 0:
                stats.latency_ms.append((now_ros - stamp_ns) / 1e6)
        stats.stage("encode_publish", (done - begin) * 1e3)
        stats.stage("receive_to_publish", (done - job.frame.received_mono) * 1e3)
        for name, ms in (result.timings_ms or {}).items():
            stats.stage(f"segmenter.{name}", float(ms))

    def _publish_failed(self, exc: BaseException) -> None:
        self.stats.count("internal_errors")
        if rclpy.ok(context=self.context):
            self._throttled("publish", f"frame not published: internal error {type(exc).__name__}: {exc}", "error")

    def _segmenter_refused(self, text: str, msg: Any) -> None:
        self.stats.count("bad_input")
        self.stats.count("bad_input_refused_by_segmenter")
        self._throttled("segmenter_refused",
                        f"frame {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} refused by the segmenter: {text}")

    def _publish_result(self, header: Any, rgb: np.ndarray, result: Any) -> Tuple[str, ...]:
        """Publish on every wanted output; returns their names (empty when nothing went out)."""
        outputs = self._outputs
        if outputs is None:
            return ()
        wanted = self._wanted_outputs()  # again: a switch or a subscriber may have changed during segmentation
        with self._publish_lock:
            # Computed with a vocabulary whose ~/labels is no longer (or not yet) out: never published (checked
            # again under the lock right before publishing).
            stale = result.vocabulary_version != self._labels_version
        overlay = None
        if "overlay" in wanted and not stale:  # rendered outside the lock: a ~/labels update need not wait for it
            from ovs_ros.overlay import render_overlay

            self.stats.count("overlay_rendered")
            overlay = render_overlay(rgb, result, alpha=float(self._param("overlay_alpha")),
                                     draw_labels=bool(self._param("overlay_draw_labels")))
        with self._publish_lock:
            if result.vocabulary_version != self._labels_version:
                self.stats.count("dropped_stale_vocabulary")
                return ()
            camera_info = self._input.camera_info if self._input is not None else None
            outputs.publish_frame(wanted, header, result, self._void_value, self._encoding, camera_info, overlay)
        return wanted

    def _publish_labels(self, void_value: Optional[int] = None, encoding: Optional[str] = None) -> None:
        """(Re-)publish ~/labels and ~/label_info. A new `void_value` / `encoding` is set in the same critical
        section as the publish, so no frame goes out with a pixel mapping that the latest ~/labels does not
        state."""
        with self._publish_lock:
            if void_value is not None:
                self._void_value = int(void_value)
            if encoding is not None:
                self._encoding = str(encoding)
            segmenter, outputs = self._segmenter, self._outputs
            if segmenter is None or outputs is None:
                return
            version = segmenter.vocabulary_version
            outputs.publish_labels(segmenter.vocabulary, version, segmenter.template_set, self._void_value,
                                   self._encoding, self._threshold(), self.get_clock().now().to_msg())
            self._labels_version = version
            self._last_label_info = time.monotonic()

    def _threshold(self) -> float:
        segmenter = self._segmenter
        return float(getattr(getattr(segmenter, "config", None), "object_mask_threshold", 0.0))

    # ------------------------------------------------------------------ diagnostics
    def _describe(self) -> dict:
        s = self._segmenter
        if s is None:
            return {}
        return {"backend": getattr(s, "backend", "?"), "device": str(getattr(s, "device", "?")),
                "template_set": getattr(s, "template_set", "?"), "vocabulary_size": len(s.vocabulary),
                "pretrained_weights": bool(getattr(s, "uses_pretrained_weights", False))}

    def _state(self) -> str:
        return "active" if self._active else ("inactive" if self._segmenter is not None else "unconfigured")

    def diagnostics_values(self) -> Tuple[int, str, Dict[str, str]]:
        sub = self._input
        view = InputView(
            active=self._active, topic=sub.topic if sub is not None else self.resolve_topic_name("image"),
            reliability=sub.in_use if sub is not None else None,
            matched_publishers=sub.publisher_count() if sub is not None else 0,
            publishers_on_topic=len(sub.publisher_reliabilities()) if sub is not None else 0,
            active_since=self._active_since)
        level, message, values = health(self.stats, self.loss, view, float(self._param("no_input_warning_s")),
                                        float(self._param("input_loss_warning_ratio")), self._state())
        values.update({k: str(v) for k, v in self._describe().items()})
        segmenter = self._segmenter
        if segmenter is not None:
            values["vocabulary_version"] = str(segmenter.vocabulary_version)
            values["semantic_encoding"] = self._encoding
        if self._last_swap_wall is not None:
            values["last_vocabulary_swap"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._last_swap_wall))
            values["last_vocabulary_swap_age_s"] = f"{time.time() - self._last_swap_wall:.1f}"
        if self._last_swap_ms is not None:
            values["last_vocabulary_swap_ms"] = f"{self._last_swap_ms:.1f}"
        return level, message, values

    def _tick(self) -> None:
        """Steady-clock timer: re-match the input QoS, re-publish ~/label_info, publish /diagnostics."""
        try:
            if self._input is not None:
                self._input.recheck()
            period = float(self._param("label_info_period_s"))
            if period > 0 and self._active and time.monotonic() - self._last_label_info >= period:
                self._republish_label_info()
            self._publish_diagnostics()
        except Exception as exc:  # diagnostics must never stop for good
            self._throttled("diagnostics", f"diagnostics tick failed: {type(exc).__name__}: {exc}", "error")

    def _republish_label_info(self) -> None:
        with self._publish_lock:
            segmenter, outputs = self._segmenter, self._outputs
            if segmenter is not None and outputs is not None:
                outputs.publish_label_info(segmenter.vocabulary, self._void_value, self._threshold(),
                                           self.get_clock().now().to_msg())
            self._last_label_info = time.monotonic()

    def _publish_diagnostics(self) -> None:
        level, message, values = self.diagnostics_values()
        kind = re.sub(r"[0-9.]+", "#", message)  # "no input frame for 11 s" and "... 12 s" are one episode
        if level != DiagnosticStatus.OK and kind != self._health_message and self._active:
            self._log.warning(message)
        self._health_message = kind if level != DiagnosticStatus.OK else None
        values["node"] = self.get_fully_qualified_name()
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: segmentation", message=message,
                                  hardware_id=self._hardware_id or values.get("device", ""))
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)
