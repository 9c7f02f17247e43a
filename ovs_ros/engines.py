"""Inference backends for the two image engines: ONNX export (the files a Jetson user feeds to `trtexec`), an on-disk
engine cache, and onnxruntime wrappers with the eager modules' call interface (design.md "Acceleration").

Engines are fixed-shape (batch 1, one H x W per branch, Q = the generator's `num_queries`): level sizes, sine
position embeddings, the ViT position-embedding resize and EVA RoPE tables depend on the input grid, so they are
traced as constants for that grid (references.md 6.4). Only the image paths become engines; the text tower stays
eager (it only runs on a vocabulary change), post-processing stays outside.

Exporter: the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) is the one used and tested. The dynamo
exporter (`exporter="dynamo"`) needs `onnxscript`; `exporter="auto"` tries it first and falls back, with a warning.

Cache: `<cache_dir>/<kind>_<key>.onnx`, key = sha256 over (model content hash, input shapes, opset, torch version,
precision, exporter, format version). A cached file is re-checked with `onnx.checker` on every start; a file that no
longer loads or checks is rebuilt. Files are written to a temporary name and renamed, so a crash mid-export never
leaves a half file under the final name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

LOG = logging.getLogger(__name__)

BACKENDS = ("eager", "onnxruntime")
DEFAULT_ENGINE_DIR = "~/.cache/ovs_ros/engines"
DEFAULT_OPSET = 17
MIN_OPSET = 17  # LayerNormalization (references.md 6.7); GridSample needs 16
ENGINE_FORMAT_VERSION = 1  # bump when the wrappers' inputs/outputs change

GENERATOR_INPUTS = ("pixel_values",)
GENERATOR_OUTPUTS = ("mask_logits", "class_logits")
CLASSIFIER_INPUTS = ("pixel_values", "mask_probs")


class EngineError(RuntimeError):
    """An engine could not be exported, loaded or run."""


# ---------------------------------------------------------------------------------------------------------------------
# Export wrappers: fixed signature, tuples out.


class GeneratorExportWrapper(nn.Module):
    """`pixel_values [1, 3, H, W]` -> the fields of the generator's output dataclass, in order: Mask2Former's
    `(mask_logits [1, Q, H/4, W/4], class_logits [1, Q, K + 1])`; FC-CLIP's `(mask_logits, class_embeddings,
    clip_mask_embeddings)` (its logits need the vocabulary and are taken outside the engine)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, pixel_values: Tensor) -> Tuple[Tensor, ...]:
        out = self.generator(pixel_values)
        return tuple(getattr(out, name) for name in generator_output_names(self.generator))


def generator_output_type(generator: Any) -> type:
    """The dataclass a generator returns: its `output_type` attribute, else Mask2Former's `GeneratorOutput`."""
    from ovs_ros.models.mask2former.generator import GeneratorOutput

    return getattr(generator, "output_type", GeneratorOutput)


def generator_output_names(generator: Any) -> Tuple[str, ...]:
    import dataclasses

    return tuple(f.name for f in dataclasses.fields(generator_output_type(generator)))


class ClassifierExportWrapper(nn.Module):
    """`(pixel_values [1, 3, H, W], mask_probs [1, Q, H, W])` -> `(mask_embeddings [1, Q, D], image_embeddings [1, D])`
    plus `patch_embeddings [1, h*w, D]` for ConvNeXt classifiers."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixel_values: Tensor, mask_probs: Tensor) -> Tuple[Tensor, ...]:
        out = self.classifier.encode_masks(pixel_values, mask_probs)
        if out.patch_embeddings is not None:
            return out.mask_embeddings, out.image_embeddings, out.patch_embeddings
        return out.mask_embeddings, out.image_embeddings


def classifier_output_names(classifier: nn.Module) -> Tuple[str, ...]:
    names = ("mask_embeddings", "image_embeddings")
    return names + ("patch_embeddings",) if getattr(classifier, "family", None) == "convnext" else names


# ---------------------------------------------------------------------------------------------------------------------
# Export.


def _check_hw(input_hw: Sequence[int], divisibility: int, what: str) -> Tuple[int, int]:
    if len(input_hw) != 2:
        raise ValueError(f"{what} input_hw must be (H, W), got {input_hw!r}")
    h, w = int(input_hw[0]), int(input_hw[1])
    if h <= 0 or w <= 0 or h % divisibility or w % divisibility:
        raise ValueError(f"{what} input_hw {(h, w)} must be positive multiples of its size_divisibility {divisibility}")
    return h, w


def _module_place(module: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _export(wrapper: nn.Module, args: Tuple[Tensor, ...], path: Path, input_names: Sequence[str],
            output_names: Sequence[str], opset: int, exporter: str) -> str:
    """Export `wrapper(*args)` to `path`, check it with `onnx.checker`; returns the exporter that worked."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET} (LayerNormalization needs 17, GridSample 16)")
    if exporter not in ("torchscript", "dynamo", "auto"):
        raise ValueError(f"exporter must be torchscript, dynamo or auto, got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = wrapper.eval()
    # nn.MultiheadAttention's inference fast path (`aten::_native_multi_head_attention`, OpenAI-style ViT blocks)
    # has no ONNX symbolic; the regular path it replaces computes the same thing.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        used = _run_exporter(wrapper, args, path, input_names, output_names, opset, exporter)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    _declare_static_outputs(path, wrapper, args, output_names)
    onnx.checker.check_model(str(path), full_check=True)
    return used


def _run_exporter(wrapper: nn.Module, args: Tuple[Tensor, ...], path: Path, input_names: Sequence[str],
                  output_names: Sequence[str], opset: int, exporter: str) -> str:
    used = None
    if exporter in ("dynamo", "auto"):
        try:
            with torch.no_grad():
                torch.onnx.export(wrapper, args, str(path), opset_version=opset, dynamo=True,
                                  input_names=list(input_names), output_names=list(output_names), external_data=False)
            used = "dynamo"
        except Exception as exc:  # noqa: BLE001 - any exporter failure: report, maybe fall back
            if exporter == "dynamo":
                raise EngineError(f"dynamo ONNX export of {type(wrapper).__name__} failed: {exc}") from exc
            LOG.warning("dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    if used is None:
        with warnings.catch_warnings():
            # Expected for fixed-shape engines: sizes become constants (TracerWarning); the legacy-exporter notice.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            with torch.no_grad():
                torch.onnx.export(wrapper, args, str(path), opset_version=opset, dynamo=False,
                                  input_names=list(input_names), output_names=list(output_names),
                                  do_constant_folding=True)
        used = "torchscript"
    return used


def _declare_static_outputs(path: Path, wrapper: nn.Module, args: Tuple[Tensor, ...],
                            output_names: Sequence[str]) -> None:
    """Write the outputs' concrete shapes into the graph (the TorchScript exporter leaves symbolic dims where sizes
    flow through Shape ops), so the file itself says what a fixed-shape engine returns."""
    import onnx

    with torch.no_grad():
        outputs = wrapper(*args)
    shapes = {name: tuple(t.shape) for name, t in zip(output_names, outputs)}
    model = onnx.load(str(path))
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        shape = shapes[value.name]
        if len(dims) != len(shape):
            raise EngineError(f"{path}: output {value.name} has rank {len(dims)} in ONNX, {len(shape)} in torch")
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    onnx.save(model, str(path))


def export_generator_onnx(generator: nn.Module, path: Union[str, Path], input_hw: Sequence[int],
                          opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> Path:
    """Export the mask generator for a fixed `[1, 3, H, W]` input; returns `path` (checked with `onnx.checker`).

    Inputs: `pixel_values`. Outputs: the fields of the generator's output dataclass (`generator_output_names`):
    Mask2Former `mask_logits [1, Q, H/4, W/4]`, `class_logits [1, Q, K_train + 1]`; FC-CLIP `mask_logits`,
    `class_embeddings [1, Q, D]`, `clip_mask_embeddings [1, Q, D]`.
    """
    h, w = _check_hw(input_hw, generator.size_divisibility, "generator")
    device, dtype = _module_place(generator)
    pixels = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    _export(GeneratorExportWrapper(generator), (pixels,), Path(path), GENERATOR_INPUTS,
            generator_output_names(generator), opset, exporter)
    return Path(path)


def export_classifier_onnx(classifier: nn.Module, path: Union[str, Path], input_hw: Sequence[int], num_queries: int,
                           opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> Path:
    """Export the CLIP mask classifier's image path (`encode_masks`) for fixed `[1, 3, H, W]` and `[1, Q, H, W]`.

    Inputs: `pixel_values`, `mask_probs` (soft masks in the CLIP input frame). Outputs: `mask_embeddings [1, Q, D]`,
    `image_embeddings [1, D]` (+ `patch_embeddings [1, h*w, D]` for ConvNeXt).
    """
    h, w = _check_hw(input_hw, classifier.size_divisibility, "classifier")
    if int(num_queries) <= 0:
        raise ValueError(f"num_queries must be positive, got {num_queries}")
    device, dtype = _module_place(classifier)
    rng = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, h, w, generator=rng).to(device=device, dtype=dtype)
    masks = torch.rand(1, int(num_queries), h, w, generator=rng).to(device=device, dtype=dtype)
    _export(ClassifierExportWrapper(classifier), (pixels, masks), Path(path), CLASSIFIER_INPUTS,
            classifier_output_names(classifier), opset, exporter)
    return Path(path)


def onnx_io_shapes(path: Union[str, Path]) -> Dict[str, List[dict]]:
    """`{"inputs": [{name, shape, dtype}], "outputs": [...]}` as written in the ONNX graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> List[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            out.append({"name": v.name, "shape": shape, "dtype": dtype})
        return out

    initializers = {i.name for i in model.graph.initializer}
    return {"inputs": describe([i for i in model.graph.input if i.name not in initializers]),
            "outputs": describe(model.graph.output)}


# ---------------------------------------------------------------------------------------------------------------------
# Cache.


def module_content_hash(module: nn.Module) -> str:
    """sha256 over the module's class, its `config` repr and every state_dict tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    h.update(repr(getattr(module, "config", None)).encode())
    for name, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def engine_key(model_hash: str, input_shapes: Sequence[Sequence[int]], opset: int, precision: str,
               exporter: str = "torchscript") -> str:
    payload = {
        "model": model_hash,
        "inputs": [list(map(int, s)) for s in input_shapes],
        "opset": int(opset),
        "torch": torch.__version__,
        "precision": precision,
        "exporter": exporter,
        "format": ENGINE_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def onnx_file_is_valid(path: Path) -> bool:
    """True if `path` loads and passes `onnx.checker` (a truncated or overwritten file does not)."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=False)
        return True
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, ValidationError, OSError ...
        LOG.warning("cached engine %s is unusable (%s: %s); rebuilding it", path, type(exc).__name__, exc)
        return False


class EngineCache:
    """ONNX files on disk, named `<kind>_<key>.onnx`; `exports` / `reuses` count what this instance did."""

    def __init__(self, cache_dir: Union[str, Path, None] = None):
        self.cache_dir = Path(cache_dir or DEFAULT_ENGINE_DIR).expanduser()
        self.exports = 0
        self.reuses = 0

    def path_for(self, kind: str, key: str) -> Path:
        return self.cache_dir / f"{kind}_{key[:32]}.onnx"

    def get_or_export(self, kind: str, key: str, export: Callable[[Path], object]) -> Path:
        """The cached file for `key`, exported with `export(tmp_path)` when missing or corrupt."""
        path = self.path_for(kind, key)
        if path.is_file() and onnx_file_is_valid(path):
            self.reuses += 1
            LOG.info("reusing %s engine %s", kind, path)
            return path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{kind}_", suffix=".onnx.tmp", dir=self.cache_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            LOG.info("exporting %s engine to %s (one-off; later starts reuse it)", kind, path)
            export(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.exports += 1
        return path

    def generator_engine(self, generator: nn.Module, input_hw: Sequence[int], opset: int = DEFAULT_OPSET,
                         precision: str = "fp32") -> Path:
        shapes = [(1, 3, int(input_hw[0]), int(input_hw[1]))]
        key = engine_key(module_content_hash(generator), shapes, opset, precision)
        return self.get_or_export("generator", key, lambda p: export_generator_onnx(generator, p, input_hw, opset))

    def classifier_engine(self, classifier: nn.Module, input_hw: Sequence[int], num_queries: int,
                          opset: int = DEFAULT_OPSET, precision: str = "fp32") -> Path:
        h, w = int(input_hw[0]), int(input_hw[1])
        shapes = [(1, 3, h, w), (1, int(num_queries), h, w)]
        key = engine_key(module_content_hash(classifier), shapes, opset, precision)
        return self.get_or_export(
            "classifier", key, lambda p: export_classifier_onnx(classifier, p, input_hw, num_queries, opset))


# ---------------------------------------------------------------------------------------------------------------------
# onnxruntime wrappers.


def _providers(device: torch.device) -> List[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.type == "cuda":
        LOG.warning("onnxruntime has no CUDAExecutionProvider here (providers: %s); engines run on the CPU",
                    available)
    return ["CPUExecutionProvider"]


def _session(path: Path, device: torch.device, num_threads: Optional[int]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between runs: the rest of the frame (torch pre/post-processing) needs those cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=_providers(device))
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"onnxruntime could not load {path}: {exc}") from exc


class _OrtEngine:
    """One onnxruntime session with fixed input shapes; torch tensors in, torch tensors out (on the input's device)."""

    def __init__(self, path: Path, device: torch.device, num_threads: Optional[int]):
        self.path = Path(path)
        self.session = _session(self.path, device, num_threads)
        self.input_shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, **inputs: Tensor) -> Dict[str, Tensor]:
        device = next(iter(inputs.values())).device
        feed = {}
        for name, tensor in inputs.items():
            expected = self.input_shapes[name]
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{self.path.name}: input {name} has shape {tuple(tensor.shape)}, the fixed-shape "
                                 f"engine was built for {expected} (set fixed_hw so every frame is padded to it)")
            feed[name] = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(self.output_names, feed)
        return {n: torch.from_numpy(o).to(device) for n, o in zip(self.output_names, outputs)}


class _OnnxRuntimeModule:
    """An ONNX engine standing in for an eager module; everything but the image path is the eager module's."""

    backend = "onnxruntime"

    def __init__(self, eager: nn.Module, onnx_path: Union[str, Path], device: Optional[torch.device] = None,
                 num_threads: Optional[int] = None):
        self.eager = eager
        self.engine = _OrtEngine(Path(onnx_path), device or _module_place(eager)[0], num_threads)
        self.onnx_path = self.engine.path

    config = property(lambda self: self.eager.config)
    size_divisibility = property(lambda self: self.eager.size_divisibility)
    pixel_mean_01 = property(lambda self: self.eager.pixel_mean_01)
    pixel_std_01 = property(lambda self: self.eager.pixel_std_01)

    def __getattr__(self, name: str) -> Any:
        """Anything else (FC-CLIP's vocabulary side: `open_vocabulary`, `backbone` text tower, logit helpers) is the
        eager module's; only the image path runs in the engine."""
        if name in ("eager", "engine", "onnx_path"):  # not yet set (during __init__): no recursion
            raise AttributeError(name)
        return getattr(self.eager, name)


class OnnxRuntimeGenerator(_OnnxRuntimeModule):
    """Drop-in for `Mask2FormerGenerator` at inference: `__call__(pixel_values) -> GeneratorOutput` runs the ONNX
    engine; `config`, `class_names`, `size_divisibility` and the normalisation come from the eager module."""

    class_names = property(lambda self: self.eager.class_names)

    def __call__(self, pixel_values: Tensor):
        out = self.engine.run(pixel_values=pixel_values)
        names = generator_output_names(self.eager)
        return generator_output_type(self.eager)(**{n: out[n].to(pixel_values.dtype) for n in names})


class OnnxRuntimeClassifier(_OnnxRuntimeModule):
    """Drop-in for `ClipClassifier` at inference: `encode_masks` runs the ONNX engine; the text path (`tokenize`,
    `encode_text`, `text_fingerprint`) and attributes are the eager module's."""

    family = property(lambda self: self.eager.family)
    logit_scale = property(lambda self: self.eager.logit_scale)
    embed_dim = property(lambda self: self.eager.embed_dim)

    def tokenize(self, texts: List[str]) -> Tensor:
        return self.eager.tokenize(texts)

    def encode_text(self, token_ids: Tensor) -> Tensor:
        return self.eager.encode_text(token_ids)

    def text_fingerprint(self) -> str:
        return self.eager.text_fingerprint()

    def encode_masks(self, pixel_values: Tensor, mask_probs: Tensor):
        from ovs_ros.models.clip.towers import MaskEmbeddingOutput

        out = self.engine.run(pixel_values=pixel_values, mask_probs=mask_probs)
        dtype = pixel_values.dtype
        patches = out.get("patch_embeddings")
        return MaskEmbeddingOutput(mask_embeddings=out["mask_embeddings"].to(dtype),
                                   image_embeddings=out["image_embeddings"].to(dtype),
                                   patch_embeddings=None if patches is None else patches.to(dtype))


# ---------------------------------------------------------------------------------------------------------------------
# Segmenter wiring.


@dataclass
class OnnxRuntimeEngines:
    generator: OnnxRuntimeGenerator
    classifier: OnnxRuntimeClassifier
    cache: EngineCache


def fixed_engine_shapes(config, generator: nn.Module, classifier: nn.Module,
                        lead: str) -> Tuple[Tuple[int, int], Optional[Tuple[int, int]]]:
    """(generator H, W; classifier H, W or None when FC-CLIP alone classifies inside the generator pass) that every
    engine backend builds for, checked against the models' size divisibility; `lead` starts the error
    ("backend compiled compiles")."""
    from ovs_ros.config_utils import ConfigError

    in_generator = bool(getattr(classifier, "uses_generator_pass", False))  # FC-CLIP alone: one engine only
    if config.generator.fixed_hw is None or (config.classifier.fixed_hw is None and not in_generator):
        raise ConfigError(f"{lead} fixed-shape engines: set generator.fixed_hw and classifier.fixed_hw (H, W), "
                          "multiples of each model's size_divisibility")
    try:
        gen_hw = _check_hw(config.generator.fixed_hw, generator.size_divisibility, "generator.fixed_hw")
        clip_hw = None if in_generator else _check_hw(config.classifier.fixed_hw, classifier.size_divisibility,
                                                      "classifier.fixed_hw")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return gen_hw, clip_hw


def build_onnxruntime_engines(config, generator: nn.Module, classifier: nn.Module,
                              device: torch.device) -> OnnxRuntimeEngines:
    """Export (or reuse from the cache) both engines for the config's `fixed_hw` and wrap them in onnxruntime."""
    from ovs_ros.config_utils import ConfigError

    in_generator = fixed_engine_shapes(config, generator, classifier, "backend onnxruntime runs")[1] is None
    from ovs_ros.segmenter_config import resolve_precision

    # the precision the run uses on this device (an fp16 config on a CPU runs fp32, and so can onnxruntime)
    precision = resolve_precision(config.precision, device.type, fallback=config.precision_fallback)
    if precision != "fp32":
        raise ConfigError("backend onnxruntime runs the fp32 ONNX engines; use precision fp32 (for fp16 build a "
                          "TensorRT engine from `ovs-export` output with `trtexec --fp16`)")
    cache = EngineCache(config.engine_cache_dir)
    num_queries = int(generator.config.num_queries)
    gen_path = cache.generator_engine(generator, config.generator.fixed_hw, precision=precision)
    threads = config.num_threads
    if in_generator:  # the classifier role runs nothing: its embeddings are outputs of the generator engine
        return OnnxRuntimeEngines(generator=OnnxRuntimeGenerator(generator, gen_path, device, threads),
                                  classifier=classifier, cache=cache)
    cls_path = cache.classifier_engine(classifier, config.classifier.fixed_hw, num_queries,
                                       precision=precision)
    return OnnxRuntimeEngines(
        generator=OnnxRuntimeGenerator(generator, gen_path, device, threads),
        classifier=OnnxRuntimeClassifier(classifier, cls_path, device, threads),
        cache=cache,
    )


# ---------------------------------------------------------------------------------------------------------------------
# `ovs-export`.


def _default_hw(short_side: int, long_side: Optional[int], divisibility: int) -> Tuple[int, int]:
    """Landscape engine shape: (short side, long-side cap), or a 4:3 frame (the common robot camera) with no cap."""
    up = lambda s: -(-int(s) // divisibility) * divisibility  # noqa: E731
    return up(short_side), up(long_side if long_side is not None else round(short_side * 4 / 3))


EXPORT_PRECISIONS = ("fp32", "fp16")


def fp32_islands(module: nn.Module) -> List[str]:
    """Names of the submodules kept in fp32 under half precision (`runs_in_fp32`); those on the exported image path
    (the deformable pixel decoder) compute in fp32 inside the graph, others (MAFT+'s per-frame CDT) run eager."""
    return [name for name, sub in module.named_modules() if getattr(sub, "runs_in_fp32", False)]


def export_engines(config, out_dir: Union[str, Path], opset: int = DEFAULT_OPSET,
                   generator_hw: Optional[Sequence[int]] = None, classifier_hw: Optional[Sequence[int]] = None,
                   exporter: str = "torchscript", precision: str = "fp32") -> Path:
    """Write `generator.onnx`, `classifier.onnx` and `engines.json` (names, shapes, dtypes, normalisation, resolved
    config) to `out_dir`; returns the sidecar's path. Shapes: the arguments, else the config's `fixed_hw`, else
    landscape (short side, long side cap) rounded up to the size divisibility.

    Models are built on the CPU in `precision`. fp16 exports the models as they run at fp16 (not a post-hoc type
    conversion): fp16 weights, inputs and outputs, with fp32 islands where the runtime keeps fp32 (the deformable
    pixel decoder, `fp32_islands`: fp32 weights, Cast nodes at its borders). That is the graph TensorRT 11 needs
    (strongly typed: the graph's own types decide the precision; there is no builder fp16 flag)."""
    import dataclasses

    from ovs_ros.model_factory import build_models
    from ovs_ros.segmenter_config import load_segmenter_config

    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"ovs-export writes {' or '.join(EXPORT_PRECISIONS)} graphs, not {precision!r}")
    config = load_segmenter_config(config, {"device": "cpu", "precision": precision, "precision_fallback": False,
                                            "backend": "eager"})
    models = build_models(config)
    generator, classifier = models.generator, models.classifier
    if getattr(classifier, "vocabulary_dependent", False):
        from ovs_ros.config_utils import ConfigError

        raise ConfigError("ovs-export cannot export a TeVA classifier: its mask embeddings depend on the vocabulary's "
                          "text, which the fixed-shape classifier engine does not take as an input; run it eager")
    g_hw = tuple(generator_hw or config.generator.fixed_hw or _default_hw(
        config.generator.input_short_side, config.generator.max_long_side, generator.size_divisibility))
    c_hw = tuple(classifier_hw or config.classifier.fixed_hw or _default_hw(
        config.classifier.input_short_side, config.classifier.max_long_side, classifier.size_divisibility))
    num_queries = int(generator.config.num_queries)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen_path, cls_path = out_dir / "generator.onnx", out_dir / "classifier.onnx"
    export_generator_onnx(generator, gen_path, g_hw, opset, exporter)
    in_generator = bool(getattr(classifier, "uses_generator_pass", False))  # FC-CLIP alone: no classifier engine
    if not in_generator:
        export_classifier_onnx(classifier, cls_path, c_hw, num_queries, opset, exporter)

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    # fp32 graphs run in onnxruntime as they are; fp16 ones are for TensorRT (`backend: onnxruntime` is fp32-only):
    # build .plan files with trtexec and set tensorrt_generator_plan / tensorrt_classifier_plan.
    resolved = dataclasses.replace(
        config, backend="onnxruntime" if precision == "fp32" else "tensorrt",
        generator=dataclasses.replace(config.generator, fixed_hw=g_hw),
        classifier=dataclasses.replace(config.classifier, fixed_hw=None if in_generator else c_hw),
    )

    def engine_entry(path: Path, module: Any) -> dict:
        """What a deployment needs to feed one engine: file, checksums, I/O shapes, normalisation."""
        return {
            "file": path.name,
            "sha256": sha256(path),
            "model_hash": module_content_hash(module),
            **onnx_io_shapes(path),
            "normalisation": {"pixel_mean_01": list(module.pixel_mean_01), "pixel_std_01": list(module.pixel_std_01),
                              "note": normalisation_note},
            "size_divisibility": module.size_divisibility,
            "fp32_islands": fp32_islands(module) if precision != "fp32" else [],
        }

    normalisation_note = ("RGB scaled to 0-1, (x - mean) / std per channel, resized to fit the fixed H x W (aspect "
                          "kept), zero-padded bottom/right after normalisation")
    sidecar = {
        "schema": "ovs_ros/engines",
        "schema_version": 1,
        "opset": opset,
        "torch_version": torch.__version__,
        "exporter": exporter,
        "precision": precision,
        "dtype_note": "feed and read every input / output in the dtype listed with it (an fp16 graph takes and "
                      "returns float16; its fp32 islands cast inside the graph)",
        "generator": {
            **engine_entry(gen_path, generator),
            "num_queries": num_queries,
            **({"class_embeddings": "FC-CLIP's in-vocabulary (class_embeddings) and out-of-vocabulary "
                                    "(clip_mask_embeddings) query embeddings; the logits (cosine with its text "
                                    "embeddings, max over synonyms, void last) are taken outside the engine"}
               if getattr(generator, "open_vocabulary", False)
               else {"class_logits": "closed training vocabulary, void last"}),
        },
        "classifier": None if in_generator else {
            **engine_entry(cls_path, classifier),
            "family": getattr(classifier, "family", None),
            "embed_dim": classifier.embed_dim,
            "mask_probs": "sigmoid(generator mask_logits), bilinear to the padded generator input, unpadded, "
                          "bilinear to the CLIP valid size, zero-padded",
        },
        "config": dataclasses.asdict(resolved),
        "random_weights": not models.uses_pretrained_weights,
    }
    sidecar_path = out_dir / "engines.json"
    sidecar_path.write_text(json.dumps(sidecar, indent=2, default=list))
    return sidecar_path
