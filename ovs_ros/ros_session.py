"""One rclpy session for a command-line program (the node, the replay tool).

Our own SIGINT/SIGTERM handlers only set an event that the program's loop checks, so it can join threads and
release models on the main thread: no KeyboardInterrupt raised in the middle of a callback, no traceback on Ctrl-C.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence


@contextmanager
def ros_session(args: Optional[Sequence[str]]) -> Iterator[threading.Event]:
    """`rclpy.init(args)` with signal handlers that set the yielded event; rclpy shut down and the previous handlers
    restored on exit."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
