"""The one-frame slot between the subscription callback and the worker: the newest frame wins."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional


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
