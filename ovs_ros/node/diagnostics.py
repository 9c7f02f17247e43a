"""/diagnostics for the node: the values (rates, latency, stages, counters, input loss) and the one status level
with the message that says what is wrong and what to do, as diagnostic_updater names things (`<node>: <task>`,
hardware_id = the device's name)."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticStatus

from ovs_ros.node.health import InputLossTracker, Stats, rate, summary

LARGE_SAMPLE_REMEDY = ("large samples over best-effort on default Fast DDS are dropped by the middleware: use a "
                       "reliable publisher (or input_reliability auto/reliable), input_mode: compressed, or "
                       "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA on both sides")
COUNTERS = ("frames_received", "frames_processed", "input_lost", "skipped_no_subscribers", "overlay_rendered",
            "dropped_frames", "dropped_results", "dropped_stale_vocabulary", "bad_input", "segmenter_errors",
            "cuda_oom", "internal_errors")


def hardware_name(device: str) -> str:
    """The device's model name (GPU name for cuda devices, CPU model otherwise) for `hardware_id`."""
    if device.startswith("cuda"):
        try:
            import torch

            return torch.cuda.get_device_name(torch.device(device))
        except Exception:
            return device
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or device


@dataclass
class InputView:
    """What the input side looks like right now (from the subscription)."""

    active: bool
    topic: str
    reliability: Optional[str]
    matched_publishers: int
    publishers_on_topic: int
    active_since: Optional[float]


def health(stats: Stats, loss: InputLossTracker, view: InputView, no_input_warning_s: float,
           loss_warning_ratio: float, state: str) -> Tuple[int, str, Dict[str, str]]:
    """(level, message, values) for one /diagnostics status."""
    now = time.monotonic()
    with stats.lock:
        counters = dict(stats.counters)
        fps_in = rate(list(stats.received), now)
        fps_out = rate(list(stats.processed), now)
        lat = summary(list(stats.latency_ms))
        age = summary(list(stats.queue_age_ms))
        stages = {name: summary(list(v))[0] for name, v in stats.stage_ms.items()}
        last_frame = stats.last_frame_mono
    received, lost, loss_ratio = loss.recent(now)
    values: Dict[str, str] = {
        "state": state,
        "fps": f"{fps_out:.2f}",
        "input_fps": f"{fps_in:.2f}",
        "input_topic": view.topic,
        "input_reliability": str(view.reliability),
        "input_publishers": str(view.matched_publishers),
        "input_loss_ratio": f"{loss_ratio:.3f}" if loss.supported else "unknown",
        "latency_ms_mean": f"{lat[0]:.1f}",
        "latency_ms_p95": f"{lat[1]:.1f}",
        "latency_ms_max": f"{lat[2]:.1f}",
        "queue_age_ms_mean": f"{age[0]:.1f}",
        "queue_age_ms_max": f"{age[2]:.1f}",
    }
    counters["input_lost"] = loss.total_lost
    for name in COUNTERS:
        values[name] = str(counters.get(name, 0))
    for name, n in sorted(counters.items()):
        if name.startswith("bad_input_"):
            values[name] = str(n)
    for name, ms in sorted(stages.items()):
        values[f"stage_ms.{name}"] = f"{ms:.2f}"

    level, message = DiagnosticStatus.OK, "ok"
    since = last_frame if last_frame is not None else view.active_since
    if view.active and no_input_warning_s > 0 and since is not None and now - since > no_input_warning_s:
        level, message = DiagnosticStatus.WARN, _no_input_message(view, now - since)
    elif view.active and loss.supported and lost and loss_ratio > loss_warning_ratio:
        level = DiagnosticStatus.WARN
        message = (f"input frames lost: {lost} of {received + lost} ({100 * loss_ratio:.0f} %) that the publishers "
                   f"sent on {view.topic} in the last {loss.window_s:.0f} s never arrived ({view.reliability} "
                   f"subscription); {LARGE_SAMPLE_REMEDY}")
    if counters.get("segmenter_errors", 0) + counters.get("cuda_oom", 0) and fps_out == 0.0 and fps_in > 0.0:
        level, message = DiagnosticStatus.ERROR, "segmenter failing on every frame"
    elif not view.active:
        level, message = DiagnosticStatus.WARN, state
    return level, message, values


def _no_input_message(view: InputView, quiet_s: float) -> str:
    head = f"no input frame for {quiet_s:.0f} s on {view.topic}"
    if view.matched_publishers > 0:
        if view.reliability == "best_effort":
            return (f"frames not arriving: {head} although {view.matched_publishers} publisher(s) are matched; "
                    f"{LARGE_SAMPLE_REMEDY}")
        return f"{head} although {view.matched_publishers} publisher(s) are matched (is the camera publishing?)"
    if view.publishers_on_topic > 0:
        return (f"{head}: {view.publishers_on_topic} publisher(s) on the topic but none matched our "
                f"{view.reliability} subscription (incompatible QoS; try input_reliability auto)")
    return f"{head}: no publisher (check the topic name and remapping)"
