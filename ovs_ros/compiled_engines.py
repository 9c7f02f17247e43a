"""`backend: compiled`: the two image engines through `torch.compile`, compiled once at their fixed shapes and warmed
up before the Segmenter is returned (so the node reports ready only when frames run at full speed).

Mode: on CUDA `reduce-overhead` (CUDA graphs: a frame is a fixed sequence of many small kernels, and replaying the
graph removes their launch cost); on the CPU inductor's `default`. `compile_mode` in the config overrides it,
`compile_backend` picks the torch.compile backend (inductor; `aot_eager` traces without code generation, for
checking that the graphs capture).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import nn

from ovs_ros.engine_modules import EngineClassifier, EngineGenerator
from ovs_ros.engines import ClassifierExportWrapper, GeneratorExportWrapper, fixed_engine_shapes

LOG = logging.getLogger(__name__)
WARMUP_RUNS = 3  # CUDA graphs are recorded on the third call of reduce-overhead


def default_compile_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


@dataclass
class CompiledEngines:
    generator: Any
    classifier: Any
    mode: str
    compile_s: float


def _compile(module: nn.Module, mode: str, backend: str) -> Any:
    kwargs = {"backend": backend, "dynamic": False, "fullgraph": False}
    if backend == "inductor":
        kwargs["mode"] = mode
    return torch.compile(module.eval(), **kwargs)


def _frame_marked(fn: Any, device: torch.device) -> Any:
    """With CUDA graphs each engine call starts a new step, so the previous outputs (already consumed by the
    frame) may be overwritten without a warning about pending use."""
    if device.type != "cuda" or not hasattr(torch.compiler, "cudagraph_mark_step_begin"):
        return fn

    def run(*args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        torch.compiler.cudagraph_mark_step_begin()
        return fn(*args)

    return run


def build_compiled_engines(config: Any, generator: nn.Module, classifier: nn.Module, device: torch.device,
                           dtype: torch.dtype) -> CompiledEngines:
    """Compile and warm up both engines at the config's `fixed_hw` (FC-CLIP alone: the generator only)."""
    gen_hw, clip_hw = fixed_engine_shapes(config, generator, classifier, "backend compiled compiles")
    in_generator = clip_hw is None
    mode = config.compile_mode or default_compile_mode(device)
    start = time.perf_counter()
    gen_fn = _frame_marked(_compile(GeneratorExportWrapper(generator), mode, config.compile_backend), device)
    with torch.inference_mode():
        pixels = torch.zeros(1, 3, *gen_hw, device=device, dtype=dtype)
        for _ in range(WARMUP_RUNS):
            gen_fn(pixels)
    engine_generator = EngineGenerator(generator, gen_fn, "compiled")
    engine_classifier: Any = classifier
    if not in_generator:
        cls_fn = _frame_marked(_compile(ClassifierExportWrapper(classifier), mode, config.compile_backend), device)
        queries = int(generator.config.num_queries)
        with torch.inference_mode():
            clip_pixels = torch.zeros(1, 3, *clip_hw, device=device, dtype=dtype)
            masks = torch.full((1, queries, *clip_hw), 0.5, device=device, dtype=dtype)
            for _ in range(WARMUP_RUNS):
                cls_fn(clip_pixels, masks)
        engine_classifier = EngineClassifier(classifier, cls_fn, "compiled")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    LOG.info("compiled engines ready in %.1f s (torch.compile backend %s, mode %s, generator %s%s)", seconds,
             config.compile_backend, mode, tuple(gen_hw), "" if clip_hw is None else f", classifier {tuple(clip_hw)}")
    return CompiledEngines(engine_generator, engine_classifier, mode, seconds)


def compiled_available(device: Optional[torch.device] = None) -> bool:
    """torch.compile with inductor needs a C++ compiler on the CPU and Triton on CUDA."""
    try:
        if device is not None and device.type == "cuda":
            import triton  # noqa: F401
        return True
    except ImportError:
        return False
