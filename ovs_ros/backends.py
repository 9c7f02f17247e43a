"""Which engines run the Segmenter's two image paths: `eager` (the torch modules), `onnxruntime`, `compiled`
(torch.compile), `tensorrt`, or `auto` (tensorrt > compiled > eager on CUDA, eager on the CPU, and it says which).

One entry, `attach_backend`, so the Segmenter treats every backend alike: each returns stand-ins with the eager
modules' interface (engine_modules.py, engines.py)."""
from __future__ import annotations

import logging
from typing import Any, Tuple

import torch

LOG = logging.getLogger(__name__)


def resolve_backend(name: str, device: torch.device, config: Any) -> str:
    """`auto` -> the best backend that can run here; any other name is returned as given."""
    if name != "auto":
        return name
    if device.type != "cuda":
        LOG.info("backend auto: eager (no CUDA device)")
        return "eager"
    fixed = config.generator.fixed_hw is not None and config.classifier.fixed_hw is not None
    if not fixed:
        LOG.info("backend auto: eager (compiled and tensorrt engines need generator.fixed_hw and "
                 "classifier.fixed_hw)")
        return "eager"
    from ovs_ros.compiled_engines import compiled_available
    from ovs_ros.tensorrt_engines import tensorrt_available

    why_not = tensorrt_available(device)
    if why_not is None:
        LOG.info("backend auto: tensorrt")
        return "tensorrt"
    if compiled_available(device):
        LOG.info("backend auto: compiled (tensorrt unavailable: %s)", why_not)
        return "compiled"
    LOG.info("backend auto: eager (tensorrt unavailable: %s; torch.compile needs Triton on CUDA)", why_not)
    return "eager"


def attach_backend(config: Any, generator: Any, classifier: Any, device: torch.device,
                   dtype: torch.dtype) -> Tuple[Any, Any, str]:
    """(generator, classifier, backend name) with the image paths on the chosen backend. Raises ConfigError with
    one line saying what to install or set when the backend cannot run here."""
    from ovs_ros.config_utils import ConfigError

    backend = resolve_backend(config.backend, device, config)
    if backend != "eager" and getattr(classifier, "vocabulary_dependent", False):
        if config.backend == "auto":
            LOG.info("backend auto: eager (the TeVA classifier's mask embeddings take the vocabulary's text as an "
                     "input, which the fixed-shape engines do not)")
            return generator, classifier, "eager"
        raise ConfigError(f"backend {backend} cannot run a TeVA classifier: its mask embeddings depend on the "
                          "vocabulary's text, which the fixed-shape engines do not take as an input; use backend eager")
    if backend == "eager":
        return generator, classifier, backend
    if backend == "onnxruntime":
        from ovs_ros.engines import build_onnxruntime_engines

        engines = build_onnxruntime_engines(config, generator, classifier, device)
        return engines.generator, engines.classifier, backend
    if backend == "compiled":
        from ovs_ros.compiled_engines import build_compiled_engines

        engines = build_compiled_engines(config, generator, classifier, device, dtype)
        return engines.generator, engines.classifier, backend
    if backend == "tensorrt":
        from ovs_ros.tensorrt_engines import TensorRTUnavailable, build_tensorrt_engines

        try:
            engines = build_tensorrt_engines(config, generator, classifier, device, dtype)
        except TensorRTUnavailable as exc:
            raise ConfigError(str(exc)) from exc
        return engines.generator, engines.classifier, backend
    raise ConfigError(f"unknown backend {backend!r}")
