"""`ovs-vocab`: list, get and set the node's vocabulary through its parameter services, for machines that have the
pip install but not the `ros2` command.

    ovs-vocab list                                  # the classes in use, from ~/labels (index, pixel value, name)
    ovs-vocab get                                   # the vocabulary parameters (vocabulary, vocabulary_file, ...)
    ovs-vocab set "red mug" laptop "table,desk" "stuff:floor"
    ovs-vocab set --file ade20k_150 [--templates t14]
    ovs-vocab --node /robot1/ovs set cup

Every call survives a lost request (re-sent with back-off, first reply wins); exit 0 on success, 1 when the node
refused (the reason is printed), 2 when it could not be reached.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, List, Optional, Sequence

from ovs_ros.ros_services import ServiceTimeout, call_with_retries

VOCABULARY_PARAMETERS = ("vocabulary", "vocabulary_file", "stuff_classes", "templates", "max_vocabulary_size")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovs-vocab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default="/ovs", help="fully qualified node name (default /ovs)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for a reply in all (a large new vocabulary is encoded before the "
                        "reply; default 120)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the classes in use (from ~/labels)")
    sub.add_parser("get", help="the vocabulary parameters")
    setter = sub.add_parser("set", help="set the vocabulary: classes, or --file")
    setter.add_argument("classes", nargs="*", help="'name,synonym,...', a 'stuff:' prefix marks stuff")
    setter.add_argument("--file", help="a vocabulary YAML path or name in config/vocabularies/")
    setter.add_argument("--templates", help="prompt template set (t1, t14, t80)")
    return parser


def _value_text(value: Any) -> str:
    from rcl_interfaces.msg import ParameterType

    kind = value.type
    if kind == ParameterType.PARAMETER_STRING_ARRAY:
        return json.dumps(list(value.string_array_value))
    if kind == ParameterType.PARAMETER_STRING:
        return json.dumps(value.string_value)
    if kind == ParameterType.PARAMETER_INTEGER:
        return str(value.integer_value)
    return "(not set)"


def _string_param(name: str, value: Any) -> Any:
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue

    v = ParameterValue()
    if isinstance(value, list):
        v.type, v.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, [str(x) for x in value]
    else:
        v.type, v.string_value = ParameterType.PARAMETER_STRING, str(value)
    return ParameterMsg(name=name, value=v)


class VocabularyClient:
    """The calls behind the command; a small rclpy node of its own, spun while waiting."""

    def __init__(self, node_name: str, timeout_s: float) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.target = node_name.rstrip("/") if node_name.startswith("/") else "/" + node_name.rstrip("/")
        self.timeout_s = timeout_s
        self.node = rclpy.create_node("ovs_vocab")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)

    def _wait(self, seconds: float) -> None:
        self.executor.spin_once(timeout_sec=seconds)

    def _call(self, srv_type: Any, service: str, request: Any, timeout_s: Optional[float] = None) -> Any:
        return call_with_retries(self.node, srv_type, f"{self.target}/{service}", request,
                                 timeout_s=timeout_s or self.timeout_s, retry_s=2.0, wait=self._wait)

    def get(self) -> List[str]:
        from rcl_interfaces.srv import GetParameters

        reply = self._call(GetParameters, "get_parameters", GetParameters.Request(names=list(VOCABULARY_PARAMETERS)),
                           min(self.timeout_s, 30.0))
        return [f"{name}: {_value_text(value)}" for name, value in zip(VOCABULARY_PARAMETERS, reply.values)]

    def set(self, classes: Sequence[str], file: Optional[str], templates: Optional[str]) -> Optional[str]:
        """None on success, else the node's reason."""
        from rcl_interfaces.srv import SetParameters

        params = []
        if classes:
            params.append(_string_param("vocabulary", list(classes)))
        if file is not None:
            params.append(_string_param("vocabulary_file", file))
        if templates is not None:
            params.append(_string_param("templates", templates))
        reply = self._call(SetParameters, "set_parameters", SetParameters.Request(parameters=params))
        reasons = [r.reason for r in reply.results if not r.successful]
        return "; ".join(reasons) if reasons else None

    def labels(self) -> dict:
        """The latest ~/labels (transient local, so it is there as soon as we subscribe)."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        got: List[str] = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        sub = self.node.create_subscription(String, f"{self.target}/labels", lambda m: got.append(m.data), qos)
        deadline = time.monotonic() + min(self.timeout_s, 30.0)
        try:
            while not got and time.monotonic() < deadline:
                self._wait(0.1)
        finally:
            self.node.destroy_subscription(sub)
        if not got:
            raise ServiceTimeout(f"no {self.target}/labels message (is the node active?)")
        return json.loads(got[-1])

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "set" and not args.classes and args.file is None and args.templates is None:
        print("ovs-vocab set: give classes, --file or --templates", file=sys.stderr)
        return 2
    import rclpy

    rclpy.init()
    client = VocabularyClient(args.node, args.timeout)
    try:
        if args.command == "get":
            print("\n".join(client.get()))
        elif args.command == "list":
            labels = client.labels()
            print(f"vocabulary v{labels['vocabulary_version']}: {len(labels['classes'])} classes "
                  f"(templates {labels['template_set']}, void pixel {labels.get('semantic_void_pixel')})")
            for c in labels["classes"]:
                kind = "stuff" if c["is_stuff"] else "thing"
                print(f"{c['class_index']:5d}  value {c['semantic_value']:5d}  {kind:5s}  {', '.join(c['synonyms'])}")
        else:
            reason = client.set(args.classes, args.file, args.templates)
            if reason:
                print(f"refused: {reason}", file=sys.stderr)
                return 1
            print("ok")
        return 0
    except ServiceTimeout as exc:
        print(f"ovs-vocab: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
