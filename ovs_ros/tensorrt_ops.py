"""Does an ONNX graph of ours parse in TensorRT? A static check against the ONNX-TensorRT parser's operator support
matrix (onnx-tensorrt docs/operators.md for TensorRT 10.0, opsets 9-20), with the restrictions that matter for our
graphs: GridSample on 4-D inputs only (native since TensorRT 8.6), Resize in the modes the parser knows, TopK sorted.

Why static: the Jetson user runs `trtexec` on the robot, long after the export; an unsupported operator should fail
the export's test here, not the robot's first start.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Union

# Operators the TensorRT 10 ONNX parser supports (the "Y" rows of its support matrix).
TENSORRT_10_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax
Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
TENSORRT_MAX_OPSET = 20
# The matrix lists nearest and linear; the parser's Resize importer also maps cubic (IResizeLayer kCUBIC) when only
# the last two axes are scaled (linear: the last three). Antialiasing is not supported.
RESIZE_MODES = {"nearest", "linear", "cubic"}
RESIZE_MAX_SCALED_AXES = {"nearest": None, "linear": 3, "cubic": 2}
RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}


def tensorrt_problems(path: Union[str, Path]) -> List[str]:
    """Every reason the TensorRT 10 ONNX parser would refuse the graph at `path` (empty list: it parses)."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    problems: List[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset > TENSORRT_MAX_OPSET:
        problems.append(f"opset {opset} > {TENSORRT_MAX_OPSET}")
    ranks = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in _all_nodes(model.graph):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.op_type} ({node.name}): custom domain {node.domain!r} needs a plugin")
            continue
        if node.op_type not in TENSORRT_10_ONNX_OPS:
            problems.append(f"{node.op_type} ({node.name}): not supported by the TensorRT ONNX parser")
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "GridSample" and ranks.get(node.input[0], 4) != 4:
            problems.append(f"GridSample ({node.name}): {ranks[node.input[0]]}-D input, TensorRT takes 4-D only")
        if node.op_type == "Resize":
            mode = _text(attrs.get("mode", b"nearest"))
            coord = _text(attrs.get("coordinate_transformation_mode", b"half_pixel"))
            if mode not in RESIZE_MODES:
                problems.append(f"Resize ({node.name}): mode {mode!r}")
            if coord not in RESIZE_COORDINATE_MODES:
                problems.append(f"Resize ({node.name}): coordinate_transformation_mode {coord!r}")
            if int(attrs.get("antialias", 0)):
                problems.append(f"Resize ({node.name}): antialias")
            limit = RESIZE_MAX_SCALED_AXES.get(mode)
            scales = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if limit is not None and scales is not None and scales.size > limit and (scales[:-limit] != 1).any():
                problems.append(f"Resize ({node.name}): {mode} scales more than the last {limit} axes")
        if node.op_type == "TopK" and int(attrs.get("sorted", 1)) != 1:
            problems.append(f"TopK ({node.name}): sorted must be 1")
    return problems


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)
