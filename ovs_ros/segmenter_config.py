"""The Segmenter's typed configuration (one flat YAML file per setup, see `config/segmenter/`).

Settings travel with the checkpoint: a model card (models/*.yaml) carries the evaluation settings its published
numbers were made with (sizes, merge thresholds, ensemble), a config that names the card inherits them, and a config
that sets one of them to another value is told, in one WARNING, that its numbers will differ from the published ones.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ovs_ros.config_utils import ConfigError, dataclass_from_dict, load_yaml

LOG = logging.getLogger(__name__)


PRECISIONS = ("fp32", "fp16", "bf16")
BACKENDS = ("eager", "onnxruntime", "compiled", "tensorrt", "auto")
PROFILES = ("reference", "fast", "random")


@dataclass
class GeneratorSettings:
    """The mask generator (MaskCLIP++'s "segmentor" role)."""

    architecture: str = "mask2former/tiny"  # "mask2former/<variant>": tiny, swin_tiny_coco_panoptic, ...
    card: Optional[str] = None  # model card (models/*.yaml or a name) naming the real weights
    checkpoint: Optional[str] = None  # explicit local weights file; overrides the card
    input_short_side: Optional[int] = None  # generator input size (short side, pixels); None = the card's, else 640
    max_long_side: Optional[int] = None  # cap on the long side (pixels); None = the card's, else 1066
    fixed_hw: Optional[Tuple[int, int]] = None  # pad every frame to exactly this (H, W): one engine shape
    training_vocabulary: str = "coco_panoptic"  # tiny only: the closed vocabulary its random head stands for
    random_seed: int = 0  # seed for random weights when no checkpoint is given (demo / tests)


@dataclass
class ClassifierSettings:
    """The CLIP mask classifier."""

    model_name: str = "tiny-eva"  # open_clip architecture name ("EVA02-B-16", ...) or a tiny test model ("tiny-eva")
    pretrained: Optional[str] = None  # open_clip tag or local file of the *base* CLIP weights; None = the card's
    # `base_clip_pretrained`, and with no card random weights
    card: Optional[str] = None  # MaskCLIP++ fine-tuned weights card (PSM + tuned tensors)
    checkpoint: Optional[str] = None  # explicit local MaskCLIP++ checkpoint; overrides the card
    input_short_side: Optional[int] = None  # CLIP branch input size (corrections.md 15); None = the card's, else 384
    max_long_side: Optional[int] = None  # None = no cap, as MaskCLIP++ (a cap changes the published setting)
    fixed_hw: Optional[Tuple[int, int]] = None
    psm: str = "identity"  # similarity without fine-tuned weights; a checkpoint's card decides otherwise
    random_seed: int = 0
    options: Dict[str, Any] = field(default_factory=dict)  # extra ClipClassifierConfig fields


@dataclass
class SegmenterConfig:
    """Everything `Segmenter.from_config` needs."""

    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    vocabulary: Union[str, List[str]] = "coco_panoptic"  # name in config/vocabularies/, a YAML path, or a list
    template_set: str = "t14"  # t1 | t14 | t80; a classifier checkpoint's card overrides it
    # Ensemble (corrections.md 9): exponent on CLIP for seen / unseen classes; 1.0 / 1.0 = ensemble off (CLIP only,
    # MaskCLIP++'s default). None = the classifier card's evaluation setting, else 1.0.
    ensemble_alpha: Optional[float] = None
    ensemble_beta: Optional[float] = None
    # Merge thresholds (corrections.md 11); None = the generator card's (Mask2Former 0.8 / 0.8), else 0.0 / 0.8.
    object_mask_threshold: Optional[float] = None
    overlap_threshold: Optional[float] = None
    profile: Optional[str] = None  # reference | fast | random: what the config claims (README "Configurations")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | fp16 | bf16: the precision on an accelerator (see precision_fallback)
    precision_fallback: bool = True  # half precision on a device without it (the CPU) runs fp32, with one INFO line;
    # false runs it as asked (parity tests)
    text_cache_dir: Optional[str] = "~/.cache/ovs_ros/text_embeddings"  # None = memory only
    weights_dir: Optional[str] = None  # default $OVS_ROS_WEIGHTS or ~/.cache/ovs_ros/weights
    max_image_pixels: int = 4096 * 4096  # larger frames are refused (a clear ValueError), not resized
    max_vocabulary_classes: int = 1000
    num_threads: Optional[int] = None  # torch CPU threads; None = torch default
    # eager | onnxruntime (fixed-shape ONNX engines, engines.py) | compiled (torch.compile, compiled_engines.py) |
    # tensorrt (tensorrt_engines.py) | auto (tensorrt > compiled > eager on CUDA, eager on the CPU). Every engine
    # backend runs fixed shapes: it needs generator.fixed_hw and classifier.fixed_hw.
    backend: str = "eager"
    engine_cache_dir: Optional[str] = None  # exported engines; None = ~/.cache/ovs_ros/engines
    compile_mode: Optional[str] = None  # torch.compile mode; None = reduce-overhead (CUDA graphs) on CUDA, default
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: capture only, no code generation)
    tensorrt_generator_plan: Optional[str] = None  # trtexec engines (Jetson) instead of building with torch-tensorrt
    tensorrt_classifier_plan: Optional[str] = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.profile is not None and self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "onnxruntime":
            # classifier "fcclip" (FC-CLIP alone) has no image path of its own: its embeddings come from the generator
            missing = [name for name, section in (("generator", self.generator), ("classifier", self.classifier))
                       if section.fixed_hw is None and not (name == "classifier" and section.model_name == "fcclip")]
            if missing:
                fields = " and ".join(m + ".fixed_hw" for m in missing)
                raise ConfigError(
                    f"backend onnxruntime runs fixed-shape engines: set {fields} to (H, W), multiples of the "
                    "model's size_divisibility (e.g. generator [512, 704], classifier [384, 512])")
        for name in ("ensemble_alpha", "ensemble_beta", "object_mask_threshold", "overlap_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")


def load_segmenter_config(
    source: Union[str, Path, dict, SegmenterConfig], overrides: Optional[dict] = None
) -> SegmenterConfig:
    """From a YAML path, a config name in `config/segmenter/`, a dict, or a config; `overrides` are top-level keys
    (dotted keys such as `generator.input_short_side` reach into sections).

    Logs one WARNING when the result departs from its model cards' reference settings (not again when `source` is
    an already loaded `SegmenterConfig`, which was told when it was loaded)."""
    if isinstance(source, SegmenterConfig):
        from dataclasses import asdict

        data = asdict(source)
    elif isinstance(source, dict):
        data = dict(source)
    else:
        from ovs_ros.paths import resolve_data_path

        data = load_yaml(resolve_data_path(source, "config/segmenter"))
    for key, value in (overrides or {}).items():
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key}: {parent} is not a section")
        target[leaf] = value
    config = apply_card_defaults(dataclass_from_dict(SegmenterConfig, data))
    if not isinstance(source, SegmenterConfig):
        departures = reference_overrides(config)
        if departures:
            name = source if isinstance(source, (str, Path)) else "config"
            claim = " although it says profile: reference" if config.profile == "reference" else ""
            LOG.warning("%s overrides reference settings of its model cards%s (%s): its numbers will differ from the "
                        "published ones", name, claim, "; ".join(departures))
    return config


def parse_set_overrides(items: Optional[List[str]]) -> Dict[str, Any]:
    """`--set key=value` items -> overrides for `load_segmenter_config`: dotted keys, values parsed as YAML
    (`generator.input_short_side=800`, `vocabulary=[person, dog]`, `text_cache_dir=null`)."""
    import yaml

    overrides: Dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. generator.input_short_side=800")
        try:
            overrides[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
    return overrides


# What a setting falls back to when neither the config nor a model card gives it.
FALLBACK_GENERATOR_SHORT_SIDE = 640
FALLBACK_GENERATOR_LONG_SIDE = 1066
FALLBACK_CLASSIFIER_SHORT_SIDE = 384
FALLBACK_ENSEMBLE_ALPHA = 1.0  # MaskCLIP++'s default: ensemble off (config_maskclippp.py:213-215)
FALLBACK_ENSEMBLE_BETA = 1.0
# Without a generator card: FC-CLIP's 0.0 / 0.8, which keeps segments of random-weight (untrained) heads.
FALLBACK_OBJECT_MASK_THRESHOLD = 0.0
FALLBACK_OVERLAP_THRESHOLD = 0.8


def apply_card_defaults(config: SegmenterConfig) -> SegmenterConfig:
    """Fill the settings a config leaves open (None) from its model cards, then from the fallbacks above.

    A card carries the settings its published numbers were made with (sizes, merge thresholds, ensemble, base CLIP
    weights), so a config that names the card gets them without repeating them; a value the config sets wins (see
    `reference_overrides`). A card whose architecture differs from the configured one is refused: its weights would
    not load, or worse, half load; so is a card this version cannot load. Idempotent.
    """
    import dataclasses

    gen_card = _card(config.generator.card)
    cls_card = _card(config.classifier.card)
    if gen_card is not None and gen_card.architecture != config.generator.architecture:
        raise ConfigError(f"generator card {gen_card.name!r} is for {gen_card.architecture!r}, but the config builds "
                          f"{config.generator.architecture!r}")
    if cls_card is not None and cls_card.architecture != config.classifier.model_name:
        raise ConfigError(f"classifier card {cls_card.name!r} is for {cls_card.architecture!r}, but the config builds "
                          f"{config.classifier.model_name!r}")
    for card in (gen_card, cls_card):
        if card is not None and not card.loadable:
            raise ConfigError(f"model card {card.name!r} cannot be loaded by this version: {card.not_loadable_reason}")

    def pick(value: Any, from_card: Any, fallback: Any) -> Any:
        if value is not None:
            return value
        return from_card if from_card is not None else fallback

    def card_value(card: Any, field_name: str) -> Any:
        return getattr(card, field_name, None) if card is not None else None

    generator = dataclasses.replace(
        config.generator,
        input_short_side=pick(config.generator.input_short_side, card_value(gen_card, "input_short_side"),
                              FALLBACK_GENERATOR_SHORT_SIDE),
        max_long_side=pick(config.generator.max_long_side, card_value(gen_card, "max_long_side"),
                           FALLBACK_GENERATOR_LONG_SIDE),
    )
    classifier = dataclasses.replace(
        config.classifier,
        input_short_side=pick(config.classifier.input_short_side, card_value(cls_card, "input_short_side"),
                              FALLBACK_CLASSIFIER_SHORT_SIDE),
        pretrained=pick(config.classifier.pretrained, card_value(cls_card, "base_clip_pretrained"), None),
    )
    card_alpha, card_beta = cls_card.evaluation_alpha_beta() if cls_card is not None else (None, None)
    return dataclasses.replace(
        config, generator=generator, classifier=classifier,
        ensemble_alpha=pick(config.ensemble_alpha, card_alpha, FALLBACK_ENSEMBLE_ALPHA),
        ensemble_beta=pick(config.ensemble_beta, card_beta, FALLBACK_ENSEMBLE_BETA),
        object_mask_threshold=pick(config.object_mask_threshold, card_value(gen_card, "object_mask_threshold"),
                                   FALLBACK_OBJECT_MASK_THRESHOLD),
        overlap_threshold=pick(config.overlap_threshold, card_value(gen_card, "overlap_threshold"),
                               FALLBACK_OVERLAP_THRESHOLD),
    )


def with_random_weights(config: SegmenterConfig) -> SegmenterConfig:
    """The same settings (sizes, thresholds, ensemble, templates: what the cards gave, already resolved) with random
    weights: no card, checkpoint or base CLIP tag left to load. For timing a released pipeline where its weights are
    not on disk; a plain `--set generator.card=null` would also drop the card's sizes (a 640 instead of an 800 run).
    The classifier's PSM becomes the identity (a fine-tuned PSM needs its weights; it costs one small matmul)."""
    import dataclasses

    config = apply_card_defaults(config)
    cls_card = _card(config.classifier.card)
    template_set = cls_card.template_set if cls_card is not None and cls_card.template_set else config.template_set
    return dataclasses.replace(
        config, template_set=template_set,
        generator=dataclasses.replace(config.generator, card=None, checkpoint=None),
        classifier=dataclasses.replace(config.classifier, card=None, checkpoint=None, pretrained=None))


def reference_settings(config: SegmenterConfig) -> Dict[str, Any]:
    """The settings the config's model cards were evaluated with, as dotted config keys (only those a card states).
    A classifier card's CLIP branch has no long-side cap and no fixed engine frame, as MaskCLIP++."""
    settings: Dict[str, Any] = {}
    gen_card = _card(config.generator.card)
    cls_card = _card(config.classifier.card)
    if gen_card is not None:
        for key, field_name in (("generator.input_short_side", "input_short_side"),
                                ("generator.max_long_side", "max_long_side"),
                                ("object_mask_threshold", "object_mask_threshold"),
                                ("overlap_threshold", "overlap_threshold")):
            if getattr(gen_card, field_name) is not None:
                settings[key] = getattr(gen_card, field_name)
        settings["generator.fixed_hw"] = None
    if cls_card is not None:
        alpha, beta = cls_card.evaluation_alpha_beta()
        for key, value in (("classifier.input_short_side", cls_card.input_short_side), ("ensemble_alpha", alpha),
                           ("ensemble_beta", beta)):
            if value is not None:
                settings[key] = value
        settings["classifier.max_long_side"] = None
        settings["classifier.fixed_hw"] = None
    return settings


def reference_overrides(config: SegmenterConfig) -> List[str]:
    """`key value (reference: card value)` for each setting that departs from the cards' reference settings."""
    departures = []
    for key, reference in reference_settings(config).items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value is None and reference is None:
            continue
        if value is None or reference is None or (value != reference if not isinstance(reference, float)
                                                  else abs(float(value) - reference) > 1e-9):
            if isinstance(value, tuple):
                value = list(value)
            departures.append(f"{key} {value} (reference: {reference})")
    return departures


def resolve_precision(precision: str, device_type: str, *, fallback: bool = True,
                      bf16_supported: Optional[bool] = None) -> str:
    """The precision a run uses on `device_type`: half precision (fp16 / bf16) runs where the device has it; on the
    CPU, or bf16 on a GPU without it, it runs fp32 with one INFO line, unless `fallback` is false."""
    if precision == "fp32" or not fallback:
        return precision
    if device_type == "cpu":
        LOG.info("precision %s asked for, but the device is the CPU: running fp32 (set precision_fallback: false to "
                 "run %s on the CPU anyway)", precision, precision)
        return "fp32"
    if precision == "bf16" and device_type == "cuda":
        if bf16_supported is None:
            import torch

            bf16_supported = bool(torch.cuda.is_bf16_supported())
        if not bf16_supported:
            LOG.info("precision bf16 asked for, but this GPU has no bf16: running fp16")
            return "fp16"
    return precision


def _card(name: Optional[str]) -> Any:
    if not name:
        return None
    from ovs_ros.models.cards import ModelCard
    from ovs_ros.paths import resolve_data_path

    try:
        return ModelCard.from_yaml(resolve_data_path(name, "models"))
    except FileNotFoundError as exc:
        raise ConfigError(f"model card {name!r}: {exc}") from exc
