"""Per-stage timings of one frame without stalling it.

On the CPU a stage's time is wall-clock. On CUDA each stage is bracketed by CUDA events on the current stream and
read once at the end of the frame (after its final copy to the host), so timing adds no host synchronisation
between the upload and that copy: the numbers are GPU-side time per stage, the frame runs as it would untimed.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Tuple

import torch


class StageTimer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.timings_ms: Dict[str, float] = {}
        self._events: List[Tuple[str, "torch.cuda.Event", "torch.cuda.Event"]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        begin = time.perf_counter()
        yield
        self.timings_ms[name] = (time.perf_counter() - begin) * 1000.0

    def finish(self) -> Dict[str, float]:
        """Resolve the CUDA events (one wait, for the last one) and return the timings."""
        if self._events:
            self._events[-1][2].synchronize()
            for name, start, end in self._events:
                self.timings_ms[name] = float(start.elapsed_time(end))
            self._events.clear()
        return self.timings_ms
