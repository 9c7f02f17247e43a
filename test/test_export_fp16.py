"""`ovs-export --precision fp16`: fp16 ONNX graphs with fp32 islands (the deformable pixel decoder), the graphs
TensorRT 11 builds as typed (no builder fp16 flag).

Each graph is checked with `onnx.checker` (full check) and the static TensorRT-parser check, its GridSample nodes
(the MSDeformAttn sampling) must take fp32 inputs, and its outputs must match the fp32 graph of the same weights.
The comparison runs both graphs through onnxruntime's CPU provider, which has the float16 kernels these graphs need
(tolerances from random-weight tiny models; measured: mask probabilities within 0.006, class softmax within 4e-4,
embeddings at cosine >= 0.9998).
"""
import json
import logging
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import shape_inference

from ovs_ros.cli import export_main
from ovs_ros.engines import export_engines, export_generator_onnx
from ovs_ros.model_factory import build_models
from ovs_ros.models.mask2former.pixel_decoder import sine_position_embedding
from ovs_ros.segmenter_config import load_segmenter_config
from ovs_ros.tensorrt_ops import tensorrt_problems

ort = pytest.importorskip("onnxruntime")

MASK_PROB_TOL = 0.02  # max |sigmoid(fp16) - sigmoid(fp32)| over every mask pixel
MASK_PROB_MEAN_TOL = 1e-3
CLASS_PROB_TOL = 5e-3  # max difference of the class softmax
MIN_COSINE = 0.999  # embeddings: cosine between the fp16 and fp32 graph's output rows


def value_types(model: onnx.ModelProto) -> dict:
    """Element type of every named value in a shape-inferred graph (inputs, outputs, intermediates, constants)."""
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def grid_sample_input_types(path) -> set:
    """The element types (as numpy names) of the data and grid inputs of every GridSample node."""
    model = shape_inference.infer_shapes(onnx.load(str(path)))
    types = value_types(model)
    nodes = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert nodes, f"{path}: no GridSample node (the deformable pixel decoder is missing?)"
    assert all(name in types for n in nodes for name in n.input[:2]), "GridSample input without a known type"
    return {onnx.helper.tensor_dtype_to_np_dtype(types[name]).name for n in nodes for name in n.input[:2]}


def initializer_types(path) -> set:
    return {onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in onnx.load(str(path)).graph.initializer
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}


def run(path, feed: dict, dtype) -> dict:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime notes that it cannot constant-fold some fp16 nodes: not an error
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {k: v.astype(dtype) for k, v in feed.items()})
    return {o.name: a.astype(np.float32) for o, a in zip(session.get_outputs(), outputs)}


def random_feed(sidecar_entry: dict) -> dict:
    rng = np.random.RandomState(0)
    return {i["name"]: (rng.rand(*i["shape"]) if i["name"] == "mask_probs" else rng.randn(*i["shape"]))
            for i in sidecar_entry["inputs"]}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


def check_fp16_pair(fp16_dir, fp32_dir) -> dict:
    """Every check of one fp16 export against the fp32 export of the same config; returns the fp16 sidecar."""
    sidecar = json.loads((fp16_dir / "engines.json").read_text())
    assert sidecar["precision"] == "fp16"
    assert sidecar["config"]["precision"] == "fp16" and sidecar["config"]["backend"] == "tensorrt"
    for kind in ("generator", "classifier"):
        entry = sidecar[kind]
        if entry is None:
            continue
        path = fp16_dir / entry["file"]
        onnx.checker.check_model(str(path), full_check=True)
        assert tensorrt_problems(path) == []
        assert {v["dtype"] for v in entry["inputs"] + entry["outputs"]} == {"float16"}, entry
        assert "float16" in initializer_types(path)  # the graph computes in fp16, not fp32 with fp16 borders
        fp32 = run(fp32_dir / entry["file"], random_feed(entry), np.float32)
        fp16 = run(path, random_feed(entry), np.float16)
        assert fp16.keys() == fp32.keys()
        for name, ref in fp32.items():
            got = fp16[name]
            assert got.shape == ref.shape and np.isfinite(got).all(), name
            if name == "mask_logits":
                diff = np.abs(1 / (1 + np.exp(-got)) - 1 / (1 + np.exp(-ref)))
                assert diff.max() <= MASK_PROB_TOL and diff.mean() <= MASK_PROB_MEAN_TOL, (diff.max(), diff.mean())
            elif name == "class_logits":
                assert np.abs(softmax(got) - softmax(ref)).max() <= CLASS_PROB_TOL
            else:  # embeddings (CLIP space): direction is what the similarity uses
                assert min_cosine(got, ref) >= MIN_COSINE, name
    gen = sidecar["generator"]
    assert gen["fp32_islands"] == ["pixel_decoder"]
    assert grid_sample_input_types(fp16_dir / gen["file"]) == {"float32"}  # MSDeformAttn samples in fp32
    return sidecar


def test_mask2former_fp16_export_with_fp32_pixel_decoder(tmp_path, capsys):
    fp16_dir, fp32_dir = tmp_path / "fp16", tmp_path / "fp32"
    assert export_main(["--config", "tiny", "--out-dir", str(fp16_dir), "--precision", "fp16"]) == 0
    assert "(fp16)" in capsys.readouterr().out
    export_engines("tiny", fp32_dir)
    assert json.loads((fp32_dir / "engines.json").read_text())["precision"] == "fp32"
    sidecar = check_fp16_pair(fp16_dir, fp32_dir)
    assert sidecar["classifier"]["fp32_islands"] == []  # the CLIP tower runs fp16 at runtime: so does its graph


def test_fcclip_fp16_export_with_fp32_pixel_decoder(tmp_path):
    fp16_dir, fp32_dir = tmp_path / "fp16", tmp_path / "fp32"
    export_engines("fcclip_tiny_random", fp16_dir, precision="fp16")
    export_engines("fcclip_tiny_random", fp32_dir)
    sidecar = check_fp16_pair(fp16_dir, fp32_dir)
    assert sidecar["classifier"] is None  # FC-CLIP alone: one engine


def test_the_grid_sample_check_sees_an_fp16_pixel_decoder(tmp_path):
    """Without the fp32 island (the whole generator cast to fp16), GridSample takes float16: the check above would
    fail. Exporting it also shows the position embedding no longer puts a float16 `Range` in the graph."""
    config = load_segmenter_config("tiny", {"device": "cpu", "precision": "fp32"})
    generator = build_models(config).generator.half()
    path = export_generator_onnx(generator, tmp_path / "all_fp16.onnx", (64, 64))  # onnx.checker runs inside
    assert grid_sample_input_types(path) == {"float16"}


def test_sine_position_embedding_is_built_in_fp32():
    """fp32: detectron2's `PositionEmbeddingSine(normalize=True)` on a mask-free map (literal re-statement);
    fp16: the same numbers, cast once at the end."""
    b, h, w, f, temperature = 2, 5, 7, 16, 10000.0
    not_mask = torch.ones(b, h, w)
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(f, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / f)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    reference = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
    ours = sine_position_embedding(b, h, w, f, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    half = sine_position_embedding(b, h, w, f, device=torch.device("cpu"), dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, ours.half())


def test_ovs_export_refuses_other_precisions(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert export_main(["--config", "tiny", "--out-dir", str(tmp_path), "--precision", "bf16"]) == 2
    assert "fp32 or fp16" in caplog.text and not (tmp_path / "engines.json").exists()
    with pytest.raises(ValueError, match="fp32 or fp16"):
        export_engines("tiny", tmp_path, precision="int8")
