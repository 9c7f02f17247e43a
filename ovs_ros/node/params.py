"""The node's parameters: one table with defaults, descriptors (description, ranges, read_only) and the checks that
`ros2 param set` requests go through. Kept apart from the node so docs/ros_interface.md and the tests can read it.

Every parameter has a value (string arrays start as typed empty arrays), so bulk reads (`ros2 param dump`,
rqt_reconfigure, one GetParameters over ListParameters) return all of them.

`read_only` parameters change the model or the ROS graph (segmenter, device, input topic and QoS): set them in the
params file or with `-p` at start-up. The others are applied on the next frame.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

TEMPLATE_SETS = ("t1", "t14", "t80")
RELIABILITIES = ("best_effort", "reliable")
INPUT_RELIABILITIES = ("auto",) + RELIABILITIES  # auto: match the publishers (input.py)
SEMANTIC_ENCODINGS = ("16UC1", "mono8")  # mono8: the Nav2 semantic segmentation layer's class image
INPUT_MODES = ("raw", "compressed")
BACKENDS = ("eager", "onnxruntime", "compiled", "tensorrt")  # "auto" resolves to one of these
# vision_msgs convention (max value of the id type = UNLABELED) vs Nav2 semantic layer / opennav (0 = nothing).
SEMANTIC_VOID_VALUES = (0, 65535)
MAX_SEMANTIC_CLASSES = 65534  # 16UC1 leaves 65535 values besides void
MAX_MONO8_CLASSES = 254  # mono8: 0..253 (+1 with void 0) or 0..254 with void 255; one value stays void


TYPED_EMPTY = ("STRING_ARRAY",)  # rclpy Parameter.Type names: declared with that type and an empty value


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any  # a value, or a name in TYPED_EMPTY ("STRING_ARRAY") for "a typed empty array"
    description: str
    read_only: bool = False
    int_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None
    choices: Optional[Sequence[Any]] = None
    pattern: Optional[str] = None  # a regular expression the whole (string) value must match


PARAMS: List[ParamSpec] = [
    # --- model (read-only: changing them needs cleanup + configure, i.e. a restart of the plain node)
    ParamSpec("segmenter_config", "config/segmenter/tiny.yaml",
              "Segmenter YAML: a path, or a name in config/segmenter/ of the installed package.", read_only=True),
    ParamSpec("device", "", "Torch device override (cpu, cuda, cuda:N, auto); empty = the segmenter config's.",
              read_only=True, pattern=r"(|auto|cpu|cuda(:[0-9]+)?)"),
    ParamSpec("backend", "",
              "Backend the segmenter must run (eager, onnxruntime, compiled or tensorrt); start-up fails if the config "
              "runs another. "
              "Empty = any.",
              read_only=True, choices=("",) + BACKENDS),
    ParamSpec("precision", "", "fp32, fp16 or bf16; empty = the segmenter config's.", read_only=True,
              choices=("", "fp32", "fp16", "bf16")),
    ParamSpec("input_short_side", 0, "Mask-generator input short side in pixels; 0 = the segmenter config's.",
              read_only=True, int_range=(0, 4096)),
    ParamSpec("object_mask_threshold", -1.0,
              "Panoptic merge: minimum segment score; -1 = the segmenter config's (0.0 for open vocabulary).",
              read_only=True, float_range=(-1.0, 1.0)),
    ParamSpec("overlap_threshold", -1.0,
              "Panoptic merge: minimum visible fraction of a mask; -1 = the segmenter config's (0.8).",
              read_only=True, float_range=(-1.0, 1.0)),
    ParamSpec("max_image_pixels", 4096 * 4096,
              "Frames with more pixels are refused (counted as bad input), never resized.",
              int_range=(1, 1 << 28)),
    # --- vocabulary (applied atomically on the next frame; a refused request keeps the old one)
    ParamSpec("vocabulary", "STRING_ARRAY",
              "Classes, one string each: 'name,synonym,...'; a 'stuff:' prefix marks a stuff class. "
              "Takes precedence over vocabulary_file at start-up; at run time the last one set wins."),
    ParamSpec("vocabulary_file", "",
              "Vocabulary YAML: a path or a name in config/vocabularies/ (e.g. coco_panoptic); "
              "empty = the segmenter config's vocabulary."),
    ParamSpec("stuff_classes", "STRING_ARRAY",
              "Labels of 'vocabulary' entries to treat as stuff (one segment per class), besides 'stuff:' entries."),
    ParamSpec("templates", "", "Prompt template set: t1, t14 or t80; empty = the segmenter config's.",
              choices=("",) + TEMPLATE_SETS),
    ParamSpec("max_vocabulary_size", 1000,
              "The one vocabulary limit: requests with more classes are refused (the segmenter gets the same limit). "
              "With semantic_encoding mono8 at most 254 classes fit.",
              int_range=(1, MAX_SEMANTIC_CLASSES)),
    # --- input (read-only: they decide the subscription)
    ParamSpec("input_mode", "raw",
              "raw: subscribe 'image' (sensor_msgs/Image); compressed: '<image>/compressed' (CompressedImage).",
              read_only=True, choices=INPUT_MODES),
    ParamSpec("input_reliability", "auto",
              "Input QoS reliability. auto: reliable when every publisher is reliable (camera drivers' default), "
              "best_effort otherwise or while there is none, re-chosen when publishers appear. best_effort loses "
              "frames above ~0.5 MB on default Fast DDS transports (docs/ros_interface.md, troubleshooting).",
              read_only=True, choices=INPUT_RELIABILITIES),
    ParamSpec("input_depth", 2, "Input QoS history depth (the worker keeps only the newest frame anyway).",
              read_only=True, int_range=(1, 100)),
    # --- outputs
    ParamSpec("output_reliability", "reliable", "QoS reliability of ~/panoptic, ~/semantic, ~/segments, ~/overlay.",
              read_only=True, choices=RELIABILITIES),
    ParamSpec("output_depth", 2, "QoS history depth of the outputs.", read_only=True, int_range=(1, 100)),
    ParamSpec("publisher_thread", True,
              "Encode and publish on a thread of its own, overlapping the next frame's segmentation (one pending "
              "result, newest wins: a replaced one counts in dropped_results). false: the worker publishes itself.",
              read_only=True),
    ParamSpec("publish_panoptic", True, "Publish ~/panoptic (32SC1 segment ids, 0 = void)."),
    ParamSpec("publish_semantic", True, "Publish ~/semantic (class values, see semantic_encoding and "
              "semantic_void_value)."),
    ParamSpec("semantic_encoding", "16UC1",
              "~/semantic pixel type: 16UC1, or mono8 for the Nav2 semantic segmentation layer (at most 254 classes).",
              choices=SEMANTIC_ENCODINGS),
    ParamSpec("publish_confidence", True, "Publish ~/confidence (mono8: segment score x 255, 0 where void)."),
    ParamSpec("publish_label_info", True,
              "Publish ~/label_info (vision_msgs/LabelInfo, transient local) when vision_msgs is installed."),
    ParamSpec("label_info_period_s", 5.0, "Re-publish ~/label_info this often besides every change; 0 = on change.",
              float_range=(0.0, 3600.0)),
    ParamSpec("publish_detections", True,
              "Publish ~/detections (vision_msgs/Detection2DArray, one per thing segment) when vision_msgs is "
              "installed."),
    ParamSpec("publish_camera_info", True,
              "Re-publish the camera's CameraInfo (the 'camera_info' sibling of the image topic) on ~/camera_info "
              "with each result's header."),
    ParamSpec("publish_segments", True, "Publish ~/segments (JSON segment table)."),
    ParamSpec("publish_overlay", True, "Publish ~/overlay (rgb8); rendered only while it has subscribers."),
    ParamSpec("semantic_void_value", 65535,
              "Value of unlabeled pixels in ~/semantic. 65535 (vision_msgs): pixel = class index. "
              "0 (Nav2 semantic layer): pixel = class index + 1. ~/labels states the mapping.",
              int_range=(0, 65535), choices=SEMANTIC_VOID_VALUES),
    ParamSpec("overlay_alpha", 0.5, "Overlay blend weight of the segment colours.", float_range=(0.0, 1.0)),
    ParamSpec("overlay_draw_labels", True, "Write class labels on the overlay."),
    # --- health
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", read_only=True,
              float_range=(0.1, 60.0)),
    ParamSpec("no_input_warning_s", 10.0,
              "Warn when an active node got no frame for this long (often a QoS mismatch); 0 = never.",
              float_range=(0.0, 3600.0)),
    ParamSpec("input_loss_warning_ratio", 0.05,
              "Warn when more than this fraction of the publishers' frames (from their sequence numbers) never "
              "arrived over the last input_loss_window_s.", float_range=(0.0, 1.0)),
    ParamSpec("input_loss_window_s", 10.0, "Window of the input loss ratio, seconds.", read_only=True,
              float_range=(1.0, 3600.0)),
    ParamSpec("error_log_period_s", 5.0, "Bad-input and segmenter errors: at most one log line per kind per period.",
              float_range=(0.0, 3600.0)),
    # --- life cycle
    ParamSpec("autostart", True,
              "Configure and activate at start-up (plain node for ros2 run). false: wait for lifecycle transitions.",
              read_only=True),
]
PARAMS_BY_NAME: Dict[str, ParamSpec] = {p.name: p for p in PARAMS}
VOCABULARY_PARAMS = ("vocabulary", "vocabulary_file", "stuff_classes", "templates", "max_vocabulary_size")


def make_descriptor(spec: ParamSpec) -> Any:
    """An rcl_interfaces ParameterDescriptor for `spec`."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    from rclpy.parameter import Parameter

    desc = ParameterDescriptor(name=spec.name, description=spec.description, read_only=spec.read_only)
    if spec.default in TYPED_EMPTY:
        desc.type = getattr(Parameter.Type, spec.default).value
    if spec.int_range is not None:
        desc.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=0)]
    if spec.float_range is not None:
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(spec.float_range[0]), to_value=float(spec.float_range[1]), step=0.0)]
    if spec.choices is not None:
        desc.additional_constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
    elif spec.pattern is not None:
        desc.additional_constraints = f"matches: {spec.pattern}"
    return desc


def declare_all(node: Any) -> None:
    """Declare every parameter of `PARAMS` on `node` (values from --params-file / -p override the defaults)."""
    from rclpy.parameter import Parameter

    for spec in PARAMS:
        default = spec.default
        typed_empty = default in TYPED_EMPTY
        if typed_empty:
            default = getattr(Parameter.Type, default)
        node.declare_parameter(spec.name, default, make_descriptor(spec))
        if typed_empty and node.get_parameter_or(spec.name, None).type_ == Parameter.Type.NOT_SET:
            # Unset (no override): give it a typed empty value, or rclpy answers a GetParameters request naming
            # it with no values at all (ros2 param dump prints an empty block).
            node.set_parameters([Parameter(spec.name, default, [])])


def check_choice(name: str, value: Any) -> Optional[str]:
    """None if `value` is allowed for `name`, else the refusal reason. Covers what descriptors cannot say (allowed
    values, patterns); types and ranges are enforced by rclpy itself, at declaration and on every set."""
    spec = PARAMS_BY_NAME.get(name)
    if spec is None:
        return None
    if spec.choices is not None and value not in spec.choices:
        return f"{name}={value!r} not allowed; one of {list(spec.choices)}"
    if spec.pattern is not None and not re.fullmatch(spec.pattern, str(value)):
        return f"{name}={value!r} not allowed; it must match {spec.pattern}"
    return None


def check_all(get: Callable[[str], Any]) -> List[str]:
    """The refusal reasons of every parameter's current value (`get(name)`); run at configure because values from a
    params file or `-p` never pass through the set-parameters callback."""
    reasons = [check_choice(spec.name, get(spec.name)) for spec in PARAMS]
    return [r for r in reasons if r]
