"""Segmenter: RGB image in, labelled panoptic result out. Plain Python + torch; the ROS node is a thin adapter over it.

Pipeline per frame (design.md, corrections.md 6, 9-12, 15):
  1. upload once, two pre-processing branches (generator: ImageNet norm, its size; CLIP: CLIP norm, its own size)
  2. mask generator -> Q soft masks (stride 4) + closed-vocabulary logits
  3. masks resampled generator frame -> CLIP frame; CLIP classifier -> Q mask embeddings
  4. similarity with the cached vocabulary embeddings -> PSM -> max over synonyms -> [Q, K] logits
  5. renormalised ensemble with the generator's logits (seen alpha / unseen beta), void from the generator
  6. vectorised panoptic merge at the input size (masks resized there, as MaskCLIP++), or on the generator frame with
     the id map resized (nearest) when the input is larger; semantic map, segment table
  7. one copy to the host (host_copy.py)

On CUDA a frame runs on the Segmenter's own stream, and nothing between the upload and that final copy makes the host
wait for the device: no `.item()`, no data-dependent shape (the merge keeps fixed-size padded tables), no upload of
Python constants (normalisation and vocabulary tensors live on the device). test/test_sync_audit.py counts it
(ovs_ros/sync_audit.py); the exceptions are on the CPU only (the merge's `nonzero` compaction, free there) and the
evaluation-only `instances=True` (a data-dependent top-k selection).

The vocabulary is an immutable snapshot swapped under a lock: a frame in flight keeps the snapshot it started with,
and a vocabulary change never blocks on a frame.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from ovs_ros.host_copy import frame_to_host
from ovs_ros.model_factory import LoadedModels, build_models
from ovs_ros.postprocess import (
    ensemble_class_probs,
    identity_lut,
    masks_for_merge,
    panoptic_at_size,
    panoptic_merge,
    instance_inference,
    semantic_inference,
    semantic_map,
)
from ovs_ros.preprocess import (
    ResizeSpec,
    clip_source,
    generator_mask_probs,
    masks_to_clip_frame,
    prepare_branch,
)
from ovs_ros.results import InstanceResult, PanopticResult
from ovs_ros.stage_timer import StageTimer
from ovs_ros.upload import FrameUploader
from ovs_ros.segmenter_config import SegmenterConfig, apply_card_defaults, load_segmenter_config
from ovs_ros.text_cache import TextEmbeddingCache, VocabularyEmbeddings
from ovs_ros.models.clip import mask_class_logits, patch_grid_of
from ovs_ros.vocabulary import Vocabulary, VocabularyError, seen_classes, train_to_test_lut

LOG = logging.getLogger(__name__)


class SegmenterOutOfMemoryError(RuntimeError):
    """The device ran out of memory on one frame; the Segmenter stays usable."""


@dataclass(frozen=True)
class VocabularyState:
    """Everything per-vocabulary that a frame needs, built once per vocabulary change."""

    vocabulary: Vocabulary
    version: int
    embeddings: VocabularyEmbeddings
    seen: torch.Tensor  # [K] bool
    lut: torch.Tensor  # [K_train + 1] long
    is_thing: torch.Tensor  # [K] bool
    labels: tuple
    fcclip: Optional[object] = None  # FCCLIPVocabulary when the generator is FC-CLIP (its own text tower)
    teva_text: Optional[torch.Tensor] = None  # [S, D] TeVA targets (template mean per phrase), TeVA classifiers only


class Segmenter:
    """Open-vocabulary panoptic segmentation of one RGB frame at a time."""

    def __init__(self, config: SegmenterConfig, models: LoadedModels) -> None:
        config = apply_card_defaults(config)  # a hand-built config may leave card settings open
        self.config = config
        self.models = models
        self.device = models.device
        self.dtype = models.dtype  # the config precision as resolved for the device (model_factory)
        self.generator = models.generator
        self.classifier = models.classifier
        self.psm = models.psm
        self.template_set = models.template_set or config.template_set
        self.uses_pretrained_weights = models.uses_pretrained_weights
        self._upload = FrameUploader(self.device)
        self._norm = {}  # (mean, std) -> device tensors, so a frame uploads no Python constants
        # One CUDA stream per Segmenter: frames of two Segmenters (two cameras) overlap on one GPU.
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        from ovs_ros.backends import attach_backend

        self.generator, self.classifier, self.backend = attach_backend(
            config, self.generator, self.classifier, self.device, self.dtype)
        self._generator_spec = ResizeSpec(
            short_side=config.generator.input_short_side,
            max_long_side=config.generator.max_long_side,
            size_divisibility=self.generator.size_divisibility,
            fixed_hw=config.generator.fixed_hw,
        )
        self._clip_spec = ResizeSpec(
            short_side=config.classifier.input_short_side,
            max_long_side=config.classifier.max_long_side,
            size_divisibility=self.classifier.size_divisibility,
            fixed_hw=config.classifier.fixed_hw,
            antialias=False,
            floor_sizes=True,
        )
        cache_dir = Path(config.text_cache_dir).expanduser() if config.text_cache_dir else None
        # FC-CLIP generator: logits over the test vocabulary from its own text tower (a second, fingerprinted cache);
        # as the classifier (the fcclip_b profile) its out-of-vocabulary branch reuses the generator's pass.
        self._fcclip = None
        if getattr(self.generator, "open_vocabulary", False):
            from ovs_ros.models.fcclip.runtime import FCCLIPRuntime

            # MAFT+ brings its own (FC-CLIP's + the CDT on the cached text classifier, per frame)
            runtime_class = getattr(self.generator, "runtime_class", None) or FCCLIPRuntime
            self._fcclip = runtime_class(self.generator, cache_dir=cache_dir, device=self.device)
        self._classifier_in_generator = bool(getattr(self.classifier, "uses_generator_pass", False))
        if self._classifier_in_generator and self._fcclip is None:
            raise ValueError("classifier 'fcclip' (FC-CLIP's own out-of-vocabulary branch) needs an fcclip/<variant> "
                             f"generator, got {config.generator.architecture!r}")
        self.text_cache = self._fcclip.text_cache if self._classifier_in_generator else TextEmbeddingCache(
            self._encode_sentences, self.classifier.text_fingerprint(), cache_dir=cache_dir, device=self.device
        )
        self._lock = threading.Lock()
        self._state: Optional[VocabularyState] = None
        self._version = 0
        self.set_vocabulary(config.vocabulary)

    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: Union[str, Path, dict, SegmenterConfig], overrides: Optional[dict] = None
    ) -> "Segmenter":
        """Build from a YAML path, a name in `config/segmenter/` ("tiny"), a dict or a `SegmenterConfig`."""
        resolved = load_segmenter_config(config, overrides)
        if resolved.num_threads:
            torch.set_num_threads(resolved.num_threads)
        return cls(resolved, build_models(resolved))

    # ----------------------------------------------------------------------------------------------------------------
    @property
    def vocabulary(self) -> Vocabulary:
        return self._current().vocabulary

    @property
    def vocabulary_version(self) -> int:
        return self._current().version

    def _current(self) -> VocabularyState:
        state = self._state
        assert state is not None, "Segmenter has no vocabulary"
        return state

    @torch.inference_mode()
    def _encode_sentences(self, sentences: List[str]) -> torch.Tensor:
        # classifier "fcclip" (FC-CLIP alone) has no text tower of its own: FC-CLIP's CLIP encodes the vocabulary
        tower = self.generator.backbone if getattr(self, "_classifier_in_generator", False) else self.classifier
        tokens = tower.tokenize(sentences).to(self.device)
        return tower.encode_text(tokens).float()

    def set_vocabulary(
        self, vocabulary: Union[Vocabulary, Sequence[str], str, Path], template_set: Optional[str] = None
    ) -> None:
        """Switch vocabulary atomically: embeddings of unseen phrases are computed first, then one reference swap.

        Raises `VocabularyError` (a ValueError) on a bad vocabulary; the previous vocabulary then stays in use.
        """
        vocab = _as_vocabulary(vocabulary, self.config.max_vocabulary_classes)
        templates = template_set or self.template_set
        if self.models.template_set and templates != self.models.template_set:
            raise VocabularyError(
                f"template set {templates!r} refused: the loaded PSM weights were trained with "
                f"{self.models.template_set!r} (the template set belongs to the classifier checkpoint)"
            )
        embeddings = self.text_cache.embed(vocab, templates)
        train_names = self.generator.config.class_synonyms
        state_kwargs = dict(
            vocabulary=vocab,
            embeddings=embeddings,
            seen=torch.as_tensor(seen_classes(vocab, train_names), device=self.device),
            lut=(identity_lut(len(vocab), self.device) if self._fcclip is not None
                 else torch.as_tensor(train_to_test_lut(vocab, train_names), device=self.device)),
            fcclip=None if self._fcclip is None else self._fcclip.prepare(vocab),
            is_thing=torch.tensor(np.array(vocab.is_thing, dtype=bool), device=self.device),
            labels=tuple(vocab.labels),
            teva_text=_teva_targets(self.classifier, embeddings, self.dtype),
        )
        with self._lock:
            self._version += 1
            self._state = VocabularyState(version=self._version, **state_kwargs)
            self.template_set = templates

    # ----------------------------------------------------------------------------------------------------------------
    def validate_image(self, rgb: np.ndarray) -> None:
        if not isinstance(rgb, np.ndarray):
            raise ValueError(f"image must be a numpy array, got {type(rgb).__name__}")
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image must be HxWx3 uint8 RGB, got shape {rgb.shape} dtype {rgb.dtype}")
        height, width = rgb.shape[:2]
        if height < 2 or width < 2:
            raise ValueError(f"image is too small: {width}x{height}")
        if height * width > self.config.max_image_pixels:
            raise ValueError(
                f"image {width}x{height} exceeds max_image_pixels={self.config.max_image_pixels}; resize it upstream"
            )

    def segment(self, rgb: np.ndarray, *, semantic: bool = False, instances: bool = False) -> PanopticResult:
        """Segment one HxWx3 uint8 RGB frame with the vocabulary current when the call starts.

        `semantic=True` also computes MaskCLIP++'s soft semantic inference (`PanopticResult.semantic_inference`, what
        the mIoU of the papers is measured on); off by default, so the node's per-frame cost is unchanged.
        `instances=True` adds MaskCLIP++'s instance predictions (`PanopticResult.instances`, for instance AP).

        Raises ValueError for a bad image and `SegmenterOutOfMemoryError` when the device runs out of memory (the
        allocator cache is emptied first, so the next, perhaps smaller, frame can run).
        """
        self.validate_image(rgb)
        try:
            if self._stream is None:
                return self._segment(rgb, semantic, instances)
            # Work queued elsewhere (a vocabulary change's text encoding) is done before this stream uses it.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                return self._segment(rgb, semantic, instances)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise SegmenterOutOfMemoryError(
                f"{self.device} ran out of memory on a {rgb.shape[1]}x{rgb.shape[0]} frame; lower "
                "generator/classifier input sizes, use precision fp16, or a smaller model"
            ) from exc

    @torch.inference_mode()
    def _segment(self, rgb: np.ndarray, semantic_inference_on: bool = False,
                 instances_on: bool = False) -> PanopticResult:
        state = self._current()
        timer = StageTimer(self.device)
        height, width = rgb.shape[:2]
        with timer.stage("preprocess"):
            image_01 = self._upload(rgb)
            gen_in = prepare_branch(
                image_01, self._generator_spec, *self._normalisation(self.generator), self.dtype
            )
            clip_in = None if self._classifier_in_generator else prepare_branch(
                clip_source(image_01, gen_in, self._clip_spec), self._clip_spec,
                *self._normalisation(self.classifier), self.dtype
            )
        with timer.stage("generator"):
            generated = self.generator(gen_in.pixel_values)
            # FC-CLIP: logits over the test vocabulary from its class embeddings (no train -> test look-up)
            gen_class_logits = (generated.class_logits[0].float() if self._fcclip is None
                                else self._fcclip.in_vocabulary_logits(generated, state.fcclip))
        with timer.stage("mask_resample"):
            if self._classifier_in_generator:  # FC-CLIP alone: its own chain (logits resized, then sigmoid)
                from ovs_ros.models.fcclip.runtime import fcclip_mask_probs

                mask_probs = fcclip_mask_probs(generated.mask_logits, gen_in.pixel_values.shape[-2:], gen_in.valid_hw,
                                               (height, width))
            else:
                mask_probs = generator_mask_probs(generated.mask_logits, gen_in)  # [1, Q, h, w] float32
            clip_masks = None if clip_in is None else masks_to_clip_frame(mask_probs, clip_in).to(self.dtype)
        if self._classifier_in_generator:  # FC-CLIP alone: its out-of-vocabulary branch, its own ensemble
            with timer.stage("ensemble"):
                class_probs = self._fcclip.ensemble(
                    gen_class_logits, self._fcclip.out_of_vocabulary_logits(generated, state.fcclip), state.fcclip,
                    self.config.ensemble_alpha, self.config.ensemble_beta)
        else:
            with timer.stage("classifier"):
                # TeVA: the mask embeddings read this vocabulary's text (from the cache; CLIP re-runs every frame)
                text = {} if state.teva_text is None else {"text_embeddings": state.teva_text}
                embedded = self.classifier.encode_masks(clip_in.pixel_values, clip_masks, **text)
            with timer.stage("similarity"):
                clip_logits = mask_class_logits(
                    embedded.mask_embeddings.float(),
                    state.embeddings.text_embeddings,
                    state.embeddings.synonym_class_index,
                    state.embeddings.num_classes,
                    self.psm,
                    self.classifier.logit_scale,
                    patch_embeddings=None if embedded.patch_embeddings is None else embedded.patch_embeddings.float(),
                    patch_grid=None if embedded.patch_embeddings is None else patch_grid_of(
                        clip_in.pixel_values.shape[-2:], embedded.patch_embeddings.shape[1]),
                )[0]
            with timer.stage("ensemble"):
                class_probs = ensemble_class_probs(
                    clip_logits,
                    gen_class_logits,
                    state.lut,
                    state.seen,
                    self.config.ensemble_alpha,
                    self.config.ensemble_beta,
                )
        with timer.stage("merge"):
            merge_masks = masks_for_merge(mask_probs, (height, width))[0]
            merged = panoptic_merge(
                merge_masks,
                class_probs,
                state.is_thing,
                object_mask_threshold=self.config.object_mask_threshold,
                overlap_threshold=self.config.overlap_threshold,
                padded=True,  # the segment count stays on the device until the final copy
            )
            panoptic, areas, boxes = panoptic_at_size(merged, (height, width))
            void_id = len(state.labels)
            semantic = semantic_map(panoptic, merged.segment_class, void_id)
        semantic_ids = instance_out = None
        if (semantic_inference_on or instances_on) and tuple(merge_masks.shape[-2:]) != (height, width):
            with timer.stage("eval_masks"):  # MaskCLIP++ resizes the soft masks to the image first
                merge_masks = torch.nn.functional.interpolate(mask_probs, size=(height, width), mode="bilinear",
                                                              align_corners=False)[0]
        if semantic_inference_on:
            with timer.stage("semantic_inference"):
                semantic_ids = semantic_inference(merge_masks, class_probs).to(torch.int32)
        if instances_on:
            with timer.stage("instance_inference"):
                instance_out = instance_inference(merge_masks, class_probs, state.is_thing)
        with timer.stage("to_host"):
            panoptic_np, semantic_np, segments, (semantic_ids_np, *instances_np) = frame_to_host(
                panoptic, semantic, merged, areas, boxes, state.labels,
                extras=(semantic_ids, *(instance_out or (None, None, None))))
        timer.finish()  # CUDA: the stage events, read after the frame's last copy to the host
        timer.timings_ms["total"] = sum(timer.timings_ms.values())
        return PanopticResult(
            panoptic=panoptic_np,
            semantic=semantic_np,
            segments=segments,
            void_class_id=void_id,
            vocabulary_version=state.version,
            timings_ms=timer.timings_ms,
            semantic_inference=semantic_ids_np,
            instances=None if instance_out is None else InstanceResult(*instances_np),
        )

    def _normalisation(self, module) -> tuple:
        """A branch's (mean, std) as device tensors, made once (`prepare_branch` passes tensors through)."""
        key = (tuple(module.pixel_mean_01), tuple(module.pixel_std_01))
        if key not in self._norm:
            self._norm[key] = tuple(torch.tensor(v, dtype=torch.float32, device=self.device) for v in key)
        return self._norm[key]

    def describe(self) -> dict:
        """Facts for logs and diagnostics."""
        return {
            "device": str(self.device),
            "precision": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32"),
            "backend": self.backend,
            "generator": self.config.generator.architecture,
            "classifier": self.config.classifier.model_name,
            "psm": type(self.psm).__name__,
            "teva": bool(getattr(self.classifier, "vocabulary_dependent", False)),  # mask embeddings read the text
            "template_set": self.template_set,
            "vocabulary_size": len(self.vocabulary),
            "pretrained_weights": self.uses_pretrained_weights,
        }


def _teva_targets(classifier: object, embeddings: VocabularyEmbeddings, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """TeVA's [TGT]: one L2-normalised embedding per phrase (its templates averaged), in the frame's compute dtype,
    made once per vocabulary; None without TeVA."""
    if not getattr(classifier, "vocabulary_dependent", False):
        return None
    return torch.nn.functional.normalize(embeddings.text_embeddings.float().mean(dim=1), dim=-1).to(dtype)


def _as_vocabulary(vocabulary: Union[Vocabulary, Sequence[str], str, Path], max_classes: int) -> Vocabulary:
    if isinstance(vocabulary, Vocabulary):
        vocab = vocabulary
    elif isinstance(vocabulary, (str, Path)):
        from ovs_ros.paths import resolve_data_path

        try:
            path = resolve_data_path(vocabulary, "config/vocabularies")
        except FileNotFoundError as exc:
            raise VocabularyError(str(exc)) from exc
        vocab = Vocabulary.from_yaml(path)
    else:
        vocab = Vocabulary.from_strings(list(vocabulary))
    if len(vocab) > max_classes:
        raise VocabularyError(f"vocabulary has {len(vocab)} classes, more than max_vocabulary_classes={max_classes}")
    return vocab
