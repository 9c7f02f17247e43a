"""Counters, sliding windows, input-loss accounting and throttled logging behind the node's /diagnostics."""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Dict, Optional, Sequence, Tuple

import numpy as np


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


class InputLossTracker:
    """Frames the publishers sent that never reached the callback, from the publication sequence numbers rclpy
    hands a callback that takes message info (one counter per publisher gid; a gap of n means n frames lost).

    Why: best-effort readers on default Fast DDS transports silently drop large samples (a VGA rgb8 frame); the
    node must say so instead of looking slow. Middlewares that report no sequence number leave `supported` False.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._last_seq: Dict[bytes, int] = {}
        self._events: Deque[Tuple[float, int, int]] = collections.deque()  # (t, received, lost)
        self.total_lost = 0
        self.supported = False

    def record(self, info: Optional[dict], now: Optional[float] = None) -> int:
        """Account one received message; returns how many frames were lost right before it."""
        now = time.monotonic() if now is None else now
        seq = None if not info else info.get("publication_sequence_number")
        gid = None if not info else info.get("publisher_gid")
        lost = 0
        with self._lock:
            if seq is not None and seq > 0:  # Fast DDS numbers from 1; 0 / None = not reported
                self.supported = True
                key = bytes(gid.get("data", b"")) if isinstance(gid, dict) else b""
                last = self._last_seq.get(key)
                if last is not None and seq > last + 1:
                    lost = int(seq - last - 1)
                self._last_seq[key] = max(int(seq), last or 0)
            self.total_lost += lost
            self._events.append((now, 1, lost))
            self._trim(now)
        return lost

    def forget_publishers(self) -> None:
        """A new subscription: sequence numbers restart being tracked (no gap across it)."""
        with self._lock:
            self._last_seq.clear()

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()

    def recent(self, now: Optional[float] = None) -> Tuple[int, int, float]:
        """(received, lost, lost / (received + lost)) over the last `window_s`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            received = sum(e[1] for e in self._events)
            lost = sum(e[2] for e in self._events)
        total = received + lost
        return received, lost, (lost / total if total else 0.0)


def rate(times: Sequence[float], now: float, horizon: float = 5.0) -> float:
    recent = [t for t in times if now - t <= horizon]
    if len(recent) < 2:
        return 0.0
    span = max(now - recent[0], 1e-6)
    return (len(recent) - 1) / span if now - recent[-1] < horizon else 0.0


def summary(values: Sequence[float]) -> Tuple[float, float, float]:
    if not values:
        return 0.0, 0.0, 0.0
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(np.percentile(arr, 95)), float(arr.max())
