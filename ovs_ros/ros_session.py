"""One rclpy session for a command-line program (the node, the replay tool).

Our own SIGINT/SIGTERM handlers only set an event that the program's loop checks, so it can join threads and
release models on the main thread: no KeyboardInterrupt raised in the middle of a callback, no traceback on Ctrl-C.
A second signal means the user does not want to wait (e.g. for a model load that does not check the event): it
raises `ForcedShutdown` in the main thread, which the program turns into a prompt non-zero exit.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence, Tuple


class ForcedShutdown(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop now. A KeyboardInterrupt, so code that survives Ctrl-C lets it through."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"second {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "killed by signal N"


def ros_args_errors() -> Tuple[type, ...]:
    """rclpy's errors for `--ros-args` it cannot use (a missing or malformed params file, an unknown flag): a user
    mistake that deserves one line, not a traceback."""
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    names = ("RCLInvalidROSArgsError", "UnknownROSArgsError")
    return tuple(getattr(_rclpy, name) for name in names if hasattr(_rclpy, name))


def _handler(stop: threading.Event) -> Any:
    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise ForcedShutdown(signum)
        stop.set()

    return on_signal


@contextmanager
def ros_session(args: Optional[Sequence[str]]) -> Iterator[threading.Event]:
    """`rclpy.init(args)` with signal handlers that set the yielded event (and raise `ForcedShutdown` on the second
    signal); rclpy shut down and the previous handlers restored on exit."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, _handler(stop)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
