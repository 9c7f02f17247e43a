"""The publisher thread: encodes and publishes finished frames while the worker segments the next one.

Why: with one thread the frame period is decode + segment + encode/publish; with this hand-over it is
max(decode + segment, encode + publish). One pending result at most (newest wins, like the input slot): a result
replaced before it went out is dropped and counted, so a slow subscriber side never builds a queue and latency stays
bounded. One producer (the worker) and one consumer keep frames in the order they were segmented, and every output
of a frame is published by one `publish(job)` call.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional


class ResultPublisher:
    """`submit` from the worker, `publish(job)` on the publisher's own thread; `stop` drains, then joins."""

    def __init__(self, publish: Callable[[Any], None], on_dropped: Callable[[], None],
                 on_error: Callable[[BaseException], None], name: str = "ovs_publisher") -> None:
        self._publish = publish
        self._on_dropped = on_dropped
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending: Optional[Any] = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Any) -> bool:
        """Hand over a finished frame; one still waiting is replaced (and counted as dropped). False (job not taken)
        once `stop` was called."""
        with self._cond:
            if self._stopping:
                return False
            replaced = self._pending is not None
            self._pending = job
            self._cond.notify_all()
        if replaced:
            self._on_dropped()
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """Publish what is pending, then end the thread: nothing is published after this returns (True), unless the
        thread is stuck in a publish for longer than `timeout` (False, it is left as a daemon)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or being published (tests, and a clean hand-over)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stopping)
                job, self._pending = self._pending, None
                if job is None:  # stopping, and drained
                    return
                self._busy = True
            try:
                self._publish(job)
            except Exception as exc:  # one bad frame must not end the thread
                self._on_error(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
