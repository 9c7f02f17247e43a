"""Python `logging` records of the model code (ovs_ros.*, ovs_training.*) through the node's ROS logger.

Why: the library logs what a robot operator needs (weights, engine builds, cache reuse); through the ROS logger it
gets a severity, stamp and node name, reaches /rosout and follows `--log-level`.
"""
from __future__ import annotations

import logging
from typing import Any, List, Sequence

BRIDGED_LOGGERS = ("ovs_ros", "ovs_training")


class RosLogHandler(logging.Handler):
    """Forwards each record to `ros_logger` at the matching severity (the ROS logger does the filtering)."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__(logging.DEBUG)
        self._ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"[{record.name}] {record.getMessage()}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            if record.levelno >= logging.CRITICAL:
                self._ros_logger.fatal(text)
            elif record.levelno >= logging.ERROR:
                self._ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self._ros_logger.info(text)
            else:
                self._ros_logger.debug(text)
        except Exception:  # a logging failure must never take a frame or a transition down
            self.handleError(record)


def bridge_python_logging(ros_logger: Any, names: Sequence[str] = BRIDGED_LOGGERS) -> List[logging.Logger]:
    """Route the named Python loggers to `ros_logger` (instead of Python's last-resort stderr handler)."""
    handler = RosLogHandler(ros_logger)
    level = _python_level(ros_logger)
    bridged = []
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, RosLogHandler)] + [handler]
        logger.setLevel(level)  # records below the ROS level are never even formatted
        logger.propagate = False
        bridged.append(logger)
    return bridged


def _python_level(ros_logger: Any) -> int:
    """The Python level matching the ROS logger's effective severity (DEBUG 10 ... FATAL 50 in both)."""
    try:
        return int(ros_logger.get_effective_level())
    except Exception:
        return logging.DEBUG
