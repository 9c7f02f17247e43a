"""`backend: tensorrt`: the two image engines as TensorRT engines, two ways.

1. torch-tensorrt (`pip install .[tensorrt]`), dynamo path: each engine compiled at its fixed shapes in the config's
   precision, serialized and cached on disk; the key covers the weights hash, shapes, precision, TensorRT,
   torch-tensorrt, torch and CUDA versions and the GPU's name, so an engine is never reused where it was not built.
2. A `.plan` built by `trtexec` from our ONNX files (the Jetson path: `ovs-export` on any machine, `trtexec` on the
   robot), run through the TensorRT Python runtime with torch CUDA tensors bound as inputs and outputs (no copies).
   TensorRT 10.x (JetPack 6: `trtexec --fp16`) and 11.x (strongly typed only: build from an fp16 ONNX graph) load
   the same way: both have the name-based I/O API used here (`set_tensor_address`, `execute_async_v3`).

Either needs a CUDA device; without one, or without the package, configure fails with one line naming what to do.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ovs_ros.engine_modules import EngineClassifier, EngineGenerator
from ovs_ros.engines import (
    DEFAULT_ENGINE_DIR, ClassifierExportWrapper, GeneratorExportWrapper, fixed_engine_shapes, module_content_hash)

LOG = logging.getLogger(__name__)
TRT_FORMAT_VERSION = 1
INSTALL_HINT = ("pip install -c constraints.txt -e '.[tensorrt]' (a torch-tensorrt built for this torch), or give "
                "tensorrt_generator_plan / tensorrt_classifier_plan files built by trtexec from `ovs-export` output "
                "(JetPack ships the TensorRT Python runtime)")


class TensorRTUnavailable(RuntimeError):
    """The tensorrt backend cannot run here (no CUDA device, no TensorRT)."""


def require_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise TensorRTUnavailable(f"backend tensorrt needs a CUDA device (device is {device}); on the CPU use "
                                  "backend compiled or eager")
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("backend tensorrt needs a CUDA device, and torch sees none")


def versions(device: torch.device) -> Dict[str, str]:
    """What an engine depends on beyond its weights and shapes."""
    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in ("tensorrt", "torch_tensorrt"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "none"
    out["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else "none"
    return out


def engine_cache_key(model_hash: str, input_shapes: Sequence[Sequence[int]], precision: str,
                     environment: Dict[str, str]) -> str:
    payload = json.dumps({"model": model_hash, "shapes": [list(map(int, s)) for s in input_shapes],
                          "precision": precision, "env": environment, "format": TRT_FORMAT_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------- trtexec plans
_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}


class TensorRTPlanEngine:
    """A serialized TensorRT engine (`trtexec --saveEngine`) called with torch CUDA tensors: inputs are bound by
    their data pointers, outputs are torch tensors the engine writes into, on the current torch stream."""

    def __init__(self, path: Path, device: torch.device, trt: Any = None) -> None:
        if trt is None:
            try:
                import tensorrt as trt
            except ImportError as exc:
                raise TensorRTUnavailable(f"a TensorRT plan needs the TensorRT Python runtime: {INSTALL_HINT}") \
                    from exc
        self.path = Path(path)
        self.device = device
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(f"TensorRT could not load {self.path} (built by another TensorRT version or "
                                      "for another GPU? rebuild it with trtexec on this machine)")
        self.context = self.engine.create_execution_context()
        self.inputs: List[str] = []
        self.outputs: List[str] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)

    def _dtype(self, name: str) -> torch.dtype:
        kind = str(self.engine.get_tensor_dtype(name)).split(".")[-1]
        if kind not in _TORCH_DTYPES:
            raise TensorRTUnavailable(f"{self.path.name}: tensor {name} has TensorRT type {kind}, not supported here")
        return _TORCH_DTYPES[kind]

    def __call__(self, *args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if len(args) != len(self.inputs):
            raise ValueError(f"{self.path.name} takes {self.inputs}, got {len(args)} tensors")
        keep = []
        for name, tensor in zip(self.inputs, args):
            expected = tuple(self.engine.get_tensor_shape(name))
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{self.path.name}: input {name} has shape {tuple(tensor.shape)}, the engine was "
                                 f"built for {expected} (set fixed_hw to the shapes given to trtexec)")
            bound = tensor.to(self._dtype(name)).contiguous()  # a no-op when the types already agree
            keep.append(bound)
            self.context.set_tensor_address(name, bound.data_ptr())
        outputs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.engine.get_tensor_shape(name)), dtype=self._dtype(name), device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT failed to run {self.path.name}")
        del keep
        return tuple(outputs)


# --------------------------------------------------------------------------------------------------- torch-tensorrt
def _torch_tensorrt() -> Any:
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(f"backend tensorrt needs torch-tensorrt: {INSTALL_HINT}") from exc
    return torch_tensorrt


def _compiled_or_cached(wrapper: nn.Module, example: Tuple[torch.Tensor, ...], dtype: torch.dtype, cache_dir: Path,
                        kind: str, precision: str, device: torch.device) -> Any:
    torch_tensorrt = _torch_tensorrt()
    key = engine_cache_key(module_content_hash(wrapper), [t.shape for t in example], precision, versions(device))
    path = cache_dir / f"{kind}_{key}.ep"
    if path.is_file():
        try:
            LOG.info("TensorRT %s engine from the cache: %s", kind, path)
            return torch_tensorrt.load(str(path)).module()
        except Exception as exc:  # noqa: BLE001 - a stale or damaged file is rebuilt, and said so
            LOG.warning("cached TensorRT engine %s does not load (%s); rebuilding it", path, exc)
    LOG.info("building the TensorRT %s engine (%s, %s); this takes minutes once", kind,
             [tuple(t.shape) for t in example], precision)
    compiled = torch_tensorrt.compile(
        wrapper.eval(), ir="dynamo", inputs=list(example), enabled_precisions={dtype}, use_explicit_typing=False,
        truncate_double=True, min_block_size=1)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch_tensorrt.save(compiled, str(tmp), inputs=list(example))
    tmp.replace(path)
    return compiled


@dataclass
class TensorRTEngines:
    generator: Any
    classifier: Any
    source: str  # "torch-tensorrt" or "plan"


def build_tensorrt_engines(config: Any, generator: nn.Module, classifier: nn.Module, device: torch.device,
                           dtype: torch.dtype) -> TensorRTEngines:
    from ovs_ros.config_utils import ConfigError

    require_cuda(device)
    gen_hw, clip_hw = fixed_engine_shapes(config, generator, classifier, "backend tensorrt builds")
    in_generator = clip_hw is None
    plans = (config.tensorrt_generator_plan, config.tensorrt_classifier_plan)
    if any(plans):
        gen_engine = TensorRTPlanEngine(Path(plans[0]).expanduser(), device) if plans[0] else None
        cls_engine = TensorRTPlanEngine(Path(plans[1]).expanduser(), device) if plans[1] else None
        if gen_engine is None or (cls_engine is None and not in_generator):
            raise ConfigError("tensorrt plans: give both tensorrt_generator_plan and tensorrt_classifier_plan")
        return TensorRTEngines(EngineGenerator(generator, gen_engine, "tensorrt"),
                               classifier if in_generator else EngineClassifier(classifier, cls_engine, "tensorrt"),
                               "plan")
    cache_dir = Path(config.engine_cache_dir or DEFAULT_ENGINE_DIR).expanduser() / "tensorrt"
    pixels = torch.zeros(1, 3, *gen_hw, device=device, dtype=dtype)
    gen_fn = _compiled_or_cached(GeneratorExportWrapper(generator), (pixels,), dtype, cache_dir, "generator",
                                 config.precision, device)
    engine_classifier: Any = classifier
    if not in_generator:
        queries = int(generator.config.num_queries)
        example = (torch.zeros(1, 3, *clip_hw, device=device, dtype=dtype),
                   torch.full((1, queries, *clip_hw), 0.5, device=device, dtype=dtype))
        cls_fn = _compiled_or_cached(ClassifierExportWrapper(classifier), example, dtype, cache_dir, "classifier",
                                     config.precision, device)
        engine_classifier = EngineClassifier(classifier, cls_fn, "tensorrt")
    return TensorRTEngines(EngineGenerator(generator, gen_fn, "tensorrt"), engine_classifier, "torch-tensorrt")


def tensorrt_available(device: torch.device) -> Optional[str]:
    """None when the tensorrt backend can run on `device`, else why not (for `backend: auto`)."""
    if device.type != "cuda":
        return "not a CUDA device"
    try:
        _torch_tensorrt()
    except TensorRTUnavailable as exc:
        return str(exc)
    return None
