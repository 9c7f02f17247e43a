"""Stand-ins for the eager generator and classifier whose image path runs in a compiled engine (torch.compile,
TensorRT): the engine takes and returns tuples in the ONNX export order (engines.py), everything else (config,
normalisation, the text tower, FC-CLIP's vocabulary side) is the eager module's. One interface for every backend,
so the Segmenter never special-cases one."""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

from torch import Tensor, nn

from ovs_ros.engines import generator_output_names, generator_output_type

EngineFn = Callable[..., Tuple[Tensor, ...]]


class _EngineModule:
    def __init__(self, eager: nn.Module, run: EngineFn, backend: str) -> None:
        self.eager = eager
        self.run = run
        self.backend = backend

    config = property(lambda self: self.eager.config)
    size_divisibility = property(lambda self: self.eager.size_divisibility)
    pixel_mean_01 = property(lambda self: self.eager.pixel_mean_01)
    pixel_std_01 = property(lambda self: self.eager.pixel_std_01)

    def __getattr__(self, name: str) -> Any:
        if name in ("eager", "run", "backend"):  # not yet set (during __init__): no recursion
            raise AttributeError(name)
        return getattr(self.eager, name)


class EngineGenerator(_EngineModule):
    """`__call__(pixel_values)` -> the eager generator's output dataclass, computed by the engine."""

    class_names = property(lambda self: self.eager.class_names)

    def __call__(self, pixel_values: Tensor) -> Any:
        outputs = self.run(pixel_values)
        names = generator_output_names(self.eager)
        return generator_output_type(self.eager)(**{n: o for n, o in zip(names, outputs)})


class EngineClassifier(_EngineModule):
    """`encode_masks(pixel_values, mask_probs)` in the engine; the text path stays eager."""

    family = property(lambda self: self.eager.family)
    logit_scale = property(lambda self: self.eager.logit_scale)
    embed_dim = property(lambda self: self.eager.embed_dim)

    def tokenize(self, texts: List[str]) -> Tensor:
        return self.eager.tokenize(texts)

    def encode_text(self, token_ids: Tensor) -> Tensor:
        return self.eager.encode_text(token_ids)

    def text_fingerprint(self) -> str:
        return self.eager.text_fingerprint()

    def encode_masks(self, pixel_values: Tensor, mask_probs: Tensor) -> Any:
        from ovs_ros.models.clip.towers import MaskEmbeddingOutput

        outputs = self.run(pixel_values, mask_probs)
        return MaskEmbeddingOutput(mask_embeddings=outputs[0], image_embeddings=outputs[1],
                                   patch_embeddings=outputs[2] if len(outputs) > 2 else None)
