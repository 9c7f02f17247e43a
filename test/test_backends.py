"""The compiled and tensorrt backends as far as a CPU allows: torch.compile parity with eager on a real photo, the
tensorrt backend's clear refusals, its plan runner's bindings (against a stand-in TensorRT runtime), its cache key,
`auto`, and the static check that our ONNX graphs parse in TensorRT."""
from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest
import torch

from ovs_ros.config_utils import ConfigError
from ovs_ros.segmenter import Segmenter
from ovs_ros.segmenter_config import load_segmenter_config

GEN_HW = (256, 384)
CLIP_HW = (224, 320)
FIXED = {"generator.fixed_hw": list(GEN_HW), "classifier.fixed_hw": list(CLIP_HW), "text_cache_dir": None}


@pytest.fixture(scope="module")
def photo():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


def _agreement(a, b) -> float:
    """Fraction of pixels whose panoptic class (semantic map) agrees."""
    return float((a.semantic == b.semantic).mean())


# ------------------------------------------------------------------------------------------------- compiled
@pytest.mark.parametrize("compile_backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_backend_matches_eager_on_a_photo(photo, compile_backend):
    """The same weights through torch.compile: >= 99 % of pixels in the same class, the same labels, masks equal
    within float tolerance. aot_eager checks the capture of both engines at their fixed shapes; inductor also its
    generated CPU code (minutes to compile on 2 cores)."""
    eager = Segmenter.from_config("tiny", FIXED)
    compiled = Segmenter.from_config("tiny", {**FIXED, "backend": "compiled", "compile_backend": compile_backend})
    assert compiled.backend == "compiled" and compiled.generator.backend == "compiled"
    want, got = eager.segment(photo), compiled.segment(photo)
    assert _agreement(want, got) >= 0.99
    assert [s.label for s in got.segments] == [s.label for s in want.segments]
    pixels = torch.rand(1, 3, *GEN_HW)
    with torch.inference_mode():
        ref, out = eager.generator(pixels), compiled.generator(pixels)
    torch.testing.assert_close(out.mask_logits, ref.mask_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.class_logits, ref.class_logits, rtol=1e-4, atol=1e-4)


def test_compiled_backend_needs_fixed_shapes():
    with pytest.raises(ConfigError, match="backend compiled compiles fixed-shape engines"):
        Segmenter.from_config("tiny", {"backend": "compiled", "text_cache_dir": None})


def test_compile_mode_follows_the_device():
    from ovs_ros.compiled_engines import default_compile_mode

    assert default_compile_mode(torch.device("cuda")) == "reduce-overhead"  # CUDA graphs
    assert default_compile_mode(torch.device("cpu")) == "default"


# ------------------------------------------------------------------------------------------------- tensorrt
def test_tensorrt_backend_on_a_cpu_says_what_it_needs():
    with pytest.raises(ConfigError, match="backend tensorrt needs a CUDA device") as info:
        Segmenter.from_config("tiny", {**FIXED, "backend": "tensorrt", "device": "cpu"})
    assert "\n" not in str(info.value)


def test_tensorrt_without_torch_tensorrt_names_the_install(monkeypatch):
    from ovs_ros import tensorrt_engines

    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails as if not installed
    with pytest.raises(tensorrt_engines.TensorRTUnavailable, match=r"pip install .*\[tensorrt\]"):
        tensorrt_engines._torch_tensorrt()
    assert tensorrt_engines.tensorrt_available(torch.device("cpu")) == "not a CUDA device"


def test_engine_cache_key_covers_weights_shapes_precision_and_environment():
    from ovs_ros.tensorrt_engines import engine_cache_key

    env = {"torch": "2.14", "cuda": "13.0", "tensorrt": "10.3", "torch_tensorrt": "2.9", "gpu": "Orin"}
    base = engine_cache_key("w", [(1, 3, 256, 384)], "fp16", env)
    assert base == engine_cache_key("w", [(1, 3, 256, 384)], "fp16", dict(env))
    others = [engine_cache_key("w2", [(1, 3, 256, 384)], "fp16", env),
              engine_cache_key("w", [(1, 3, 256, 416)], "fp16", env),
              engine_cache_key("w", [(1, 3, 256, 384)], "fp32", env)]
    others += [engine_cache_key("w", [(1, 3, 256, 384)], "fp16", {**env, k: "other"}) for k in env]
    assert len({base, *others}) == len(others) + 1


class _FakeTensorRT(types.SimpleNamespace):
    """The slice of the TensorRT Python API the plan runner uses, with an 'engine' that copies input 0 to output 0
    and writes input 1 + 1 to output 1 through the bound addresses (host memory: the test runs on the CPU)."""

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT, HALF = "DataType.FLOAT", "DataType.HALF"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    def __init__(self, tensors):
        super().__init__()
        self.tensors = tensors  # name -> (mode, shape, dtype)
        self.executed = []

    def Runtime(self, logger):  # noqa: N802 - TensorRT's name
        fake = self

        class Engine:
            num_io_tensors = len(fake.tensors)

            def get_tensor_name(self, i):
                return list(fake.tensors)[i]

            def get_tensor_mode(self, name):
                return fake.tensors[name][0]

            def get_tensor_shape(self, name):
                return fake.tensors[name][1]

            def get_tensor_dtype(self, name):
                return fake.tensors[name][2]

            def create_execution_context(self):
                class Context:
                    addresses = {}

                    def set_tensor_address(self, name, ptr):
                        self.addresses[name] = ptr

                    def execute_async_v3(self, stream):
                        fake.executed.append((dict(self.addresses), stream))
                        nbytes = int(np.prod(fake.tensors["x"][1])) * 4
                        ctypes.memmove(self.addresses["y"], self.addresses["x"], nbytes)
                        n = int(np.prod(fake.tensors["m"][1]))
                        m = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["m"]))
                        z = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["z"]))
                        z[:] = m + 1.0
                        return True
                return Context()

        class Runtime:
            def deserialize_cuda_engine(self, data):
                return Engine() if data == b"PLAN" else None
        return Runtime()


def test_plan_engine_binds_torch_tensors_by_address(tmp_path):
    from ovs_ros.tensorrt_engines import TensorRTPlanEngine, TensorRTUnavailable

    trt = _FakeTensorRT({"x": ("INPUT", (1, 3, 4, 6), trt_float := "DataType.FLOAT"),
                         "m": ("INPUT", (1, 2, 4, 6), trt_float),
                         "y": ("OUTPUT", (1, 3, 4, 6), trt_float),
                         "z": ("OUTPUT", (1, 2, 4, 6), trt_float)})
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"PLAN")
    engine = TensorRTPlanEngine(plan, torch.device("cpu"), trt=trt)
    assert engine.inputs == ["x", "m"] and engine.outputs == ["y", "z"]
    x, m = torch.rand(1, 3, 4, 6), torch.rand(1, 2, 4, 6)
    y, z = engine(x, m)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    torch.testing.assert_close(z, m + 1.0)
    addresses, _ = trt.executed[0]
    assert addresses["x"] == x.data_ptr() and addresses["m"] == m.data_ptr()  # bound in place, no copy
    with pytest.raises(ValueError, match="built for"):
        engine(torch.rand(1, 3, 8, 6), m)
    bad = tmp_path / "other.plan"
    bad.write_bytes(b"not a plan")
    with pytest.raises(TensorRTUnavailable, match="could not load"):
        TensorRTPlanEngine(bad, torch.device("cpu"), trt=trt)


# ------------------------------------------------------------------------------------------------- auto
def test_auto_backend_is_eager_on_a_cpu():
    segmenter = Segmenter.from_config("tiny", {**FIXED, "backend": "auto"})
    assert segmenter.backend == "eager" and segmenter.describe()["backend"] == "eager"


# ------------------------------------------------------------------------------------------------- TensorRT parser
def test_our_onnx_graphs_use_only_operators_tensorrt_parses(tmp_path):
    from ovs_ros.engines import export_classifier_onnx, export_generator_onnx
    from ovs_ros.model_factory import build_models
    from ovs_ros.tensorrt_ops import tensorrt_problems

    models = build_models(load_segmenter_config("tiny"))
    generator = export_generator_onnx(models.generator, tmp_path / "generator.onnx", GEN_HW)
    classifier = export_classifier_onnx(models.classifier, tmp_path / "classifier.onnx", CLIP_HW,
                                        int(models.generator.config.num_queries))
    assert tensorrt_problems(generator) == []
    assert tensorrt_problems(classifier) == []


def test_tensorrt_check_finds_what_the_parser_refuses(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from ovs_ros.tensorrt_ops import tensorrt_problems

    x5 = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4, 5])
    grid = helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 3, 4, 5, 3])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    uniq = helper.make_tensor_value_info("u", TensorProto.FLOAT, None)
    nodes = [helper.make_node("GridSample", ["x", "g"], ["y"], name="sample5d"),
             helper.make_node("Unique", ["x"], ["u"], name="uniq"),
             helper.make_node("Resize", ["x", "", "s"], ["r"], name="cubic3d", mode="cubic"),
             helper.make_node("Resize", ["x", "", "s2"], ["r2"], name="cubic2d", mode="cubic"),
             helper.make_node("Resize", ["x", "", "s2"], ["r3"], name="smooth", mode="linear", antialias=1)]
    scales = helper.make_tensor("s", TensorProto.FLOAT, [5], [1, 1, 2, 2, 2])
    scales2 = helper.make_tensor("s2", TensorProto.FLOAT, [5], [1, 1, 1, 2, 2])
    graph = helper.make_graph(nodes, "bad", [x5, grid], [out, uniq], initializer=[scales, scales2])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    problems = tensorrt_problems(path)
    assert any("GridSample (sample5d): 5-D" in p for p in problems), problems
    assert any("Unique (uniq): not supported" in p for p in problems), problems
    assert any("Resize (cubic3d): cubic scales more than the last 2 axes" in p for p in problems), problems
    assert not any("cubic2d" in p for p in problems), problems  # bicubic on H, W: the ViT position table's resize
    assert any("Resize (smooth): antialias" in p for p in problems), problems


# ------------------------------------------------------------------------------------------------- the measuring tools
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    """The prepared GPU check, reduced to what a CPU can do quickly: its JSON and table come out."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tools" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--device", "cpu", "--configs", "tiny", "--cases", "eager:fp32,tensorrt:fp16",
                           "--iterations", "2", "--warmup", "1", "--no-switch", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = report["results"]["tiny"]
    assert cases["eager:fp32"]["timings_ms"]["total"]["median"] > 0
    assert "backend tensorrt needs a CUDA device" in cases["tensorrt:fp16"]["error"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| tiny | eager | float32 |" in table and "1.00x (reference)" in table
    # the host-sync audit: on the CPU only the merge's compaction (test/test_sync_audit.py), 0 from the CUDA debug mode
    syncs = cases["eager:fp32"]["host_syncs"]
    assert syncs["window"] == 1 and syncs["cuda_debug"] == 0 and list(syncs["sites"]) == [
        next(k for k in syncs["sites"] if k.startswith("nonzero @") and "panoptic_merge" in k)]
    assert "| 0 / 1 |" in table


def test_benchmark_compares_backends_and_writes_json(tmp_path):
    import json

    from ovs_ros.benchmark import main

    out = tmp_path / "bench.json"
    assert main(["--config", "tiny", "--iterations", "2", "--warmup", "1", "--switch-vocabulary", "",
                 "--postprocess-size", "0", "--backends", "eager", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    total = report["backends"]["eager"]["stages"]["total"]
    assert total["median"] > 0 and total["p90"] >= total["median"]


def test_random_weights_keep_the_cards_settings_where_nulling_the_cards_drops_them(capsys):
    """`ovs-benchmark --random-weights` times a released pipeline at its reference settings without its files;
    `--set generator.card=null` would run the FC-CLIP pairing at the 640 fallback instead of the card's 800."""
    from ovs_ros.benchmark import main
    from ovs_ros.segmenter_config import load_segmenter_config, with_random_weights

    full = load_segmenter_config("eva02_b16_fcclip_b")
    rnd = with_random_weights(full)
    keys = lambda c: (c.generator.input_short_side, c.generator.max_long_side, c.classifier.input_short_side,  # noqa: E731
                      c.object_mask_threshold, c.overlap_threshold, c.ensemble_alpha, c.ensemble_beta, c.template_set)
    assert keys(rnd) == keys(full) and keys(full)[:2] == (800, 2560)
    assert (rnd.generator.card, rnd.classifier.card, rnd.classifier.pretrained, rnd.generator.checkpoint) == (
        None, None, None, None)
    nulled = load_segmenter_config("eva02_b16_fcclip_b", {"generator.card": None, "classifier.card": None})
    assert nulled.generator.input_short_side != 800
    wtext = with_random_weights(load_segmenter_config("eva02_l14_336_wtext_maftl_pan"))
    assert (wtext.template_set, wtext.ensemble_alpha, wtext.classifier.input_short_side) == ("t1", 0.9, 392)
    assert main(["--config", "tiny", "--iterations", "1", "--warmup", "0", "--switch-vocabulary", "",
                 "--postprocess-size", "0", "--random-weights"]) == 0
    assert "| random weights" in capsys.readouterr().out
