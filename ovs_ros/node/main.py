"""Entry point of `ovs_node` and `python -m ovs_ros.node`: argument parsing, the rclpy session, the executor."""
from __future__ import annotations

import argparse
import sys
import threading
from typing import List, Optional, Sequence, Tuple

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.parameter import Parameter

from ovs_ros.node.core import HAVE_LIFECYCLE, NODE_NAME, OvsNode, _quietly
from ovs_ros.node.log_bridge import bridge_python_logging
from ovs_ros.node.params import INPUT_MODES
from ovs_ros.ros_session import ForcedShutdown, ros_args_errors, ros_session

# Image callbacks, worker hand-off, parameter services (reentrant), lifecycle services, diagnostics, camera_info:
# enough threads that none of them waits for another.
EXECUTOR_THREADS = 6


def _parse_cli(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    from rclpy.utilities import remove_ros_args

    parser = argparse.ArgumentParser(
        prog="ovs_node", description="Open-vocabulary panoptic segmentation node. ROS arguments go after --ros-args, "
        "e.g. --ros-args --params-file config/ovs.yaml -p vocabulary:=\"['red mug', 'laptop']\".")
    parser.add_argument("--managed", action="store_true",
                        help="start unconfigured and wait for lifecycle transitions (same as -p autostart:=false)")
    parser.add_argument("--autostart", choices=("", "true", "false"), default="",
                        help="override the autostart parameter; empty = keep the params file's (the launch file "
                        "passes its autostart argument this way)")
    parser.add_argument("--use-sim-time", choices=("", "true", "false"), default="",
                        help="override the use_sim_time parameter; empty = keep the params file's")
    parser.add_argument("--name", default=NODE_NAME, help=f"node name (default {NODE_NAME})")
    parser.add_argument("--input-mode", choices=("",) + INPUT_MODES, default="",
                        help="override the input_mode parameter (raw or compressed); empty = keep the params "
                        "file's (the launch file passes its input_mode argument this way)")
    return parser.parse_args(remove_ros_args(list(argv))[1:]), list(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit code 0 after Ctrl-C or SIGTERM, 1 when the node could not start (a bad parameter or segmenter config),
    128 + N after a second signal N (start-up abandoned)."""
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
    overrides = []
    if cli.managed or cli.autostart == "false":
        overrides.append(Parameter("autostart", value=False))
    elif cli.autostart == "true":
        overrides.append(Parameter("autostart", value=True))
    if cli.input_mode:
        overrides.append(Parameter("input_mode", value=cli.input_mode))
    if cli.use_sim_time:
        overrides.append(Parameter("use_sim_time", value=cli.use_sim_time == "true"))
    try:
        node = OvsNode(cli.name, parameter_overrides=overrides)
    except ParameterException as exc:
        rclpy.logging.get_logger(cli.name).fatal(f"invalid parameter: {exc}; exiting")
        return None
    bridge_python_logging(node.get_logger())  # model-code log lines from here on, under the node's name
    return node


def _start(node: OvsNode, stop: threading.Event) -> int:
    """Configure and activate unless managed (or already asked to stop); 1 when that failed."""
    if not node.get_parameter("autostart").value:
        if HAVE_LIFECYCLE:
            node.get_logger().info("managed mode: waiting for configure/activate (lifecycle services)")
        return 0
    if not stop.is_set() and not node.autostart():
        node.get_logger().fatal("could not start (the reason is logged above); exiting")
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
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
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
