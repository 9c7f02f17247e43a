"""The Segmenter's typed configuration (one flat YAML file per setup, see `config/segmenter/`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ovs_ros.config_utils import ConfigError, dataclass_from_dict, load_yaml


@dataclass
class GeneratorSettings:
    """The mask generator (MaskCLIP++'s "segmentor" role)."""

    architecture: str = "mask2former/tiny"  # "mask2former/<variant>": tiny, swin_tiny_coco_panoptic, ...
    card: Optional[str] = None  # model card (models/*.yaml or a name) naming the real weights
    checkpoint: Optional[str] = None  # explicit local weights file; overrides the card
    input_short_side: Optional[int] = None  # generator input size (short side, pixels); None = the card's, else 640
    max_long_side: int = 1066  # cap on the long side (pixels)
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
    ensemble_alpha: Optional[float] = None  # exponent on CLIP for seen classes (corrections.md 9); None = card's or 0.9
    ensemble_beta: float = 1.0  # ... for unseen classes (1.0 = CLIP only)
    object_mask_threshold: float = 0.0  # corrections.md 11
    overlap_threshold: float = 0.8
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | fp16 (fp16 only on CUDA)
    text_cache_dir: Optional[str] = "~/.cache/ovs_ros/text_embeddings"  # None = memory only
    weights_dir: Optional[str] = None  # default $OVS_ROS_WEIGHTS or ~/.cache/ovs_ros/weights
    max_image_pixels: int = 4096 * 4096  # larger frames are refused (a clear ValueError), not resized
    max_vocabulary_classes: int = 1000
    num_threads: Optional[int] = None  # torch CPU threads; None = torch default
    backend: str = "eager"  # eager | onnxruntime (fixed-shape ONNX engines: needs both fixed_hw; see engines.py)
    engine_cache_dir: Optional[str] = None  # exported engines; None = ~/.cache/ovs_ros/engines

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16"):
            raise ConfigError(f"precision must be fp32 or fp16, got {self.precision!r}")
        if self.backend not in ("eager", "onnxruntime"):
            raise ConfigError(f"backend must be eager or onnxruntime, got {self.backend!r}")
        if self.backend == "onnxruntime":
            missing = [name for name, section in (("generator", self.generator), ("classifier", self.classifier))
                       if section.fixed_hw is None]
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
    (dotted keys such as `generator.input_short_side` reach into sections)."""
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
    return apply_card_defaults(dataclass_from_dict(SegmenterConfig, data))


# What a setting falls back to when neither the config nor a model card gives it.
FALLBACK_GENERATOR_SHORT_SIDE = 640
FALLBACK_CLASSIFIER_SHORT_SIDE = 384
FALLBACK_ENSEMBLE_ALPHA = 0.9


def apply_card_defaults(config: SegmenterConfig) -> SegmenterConfig:
    """Fill the settings a config leaves open (None) from its model cards, then from the fallbacks above.

    A card carries the setting its published numbers were made with (CLIP input size, ensemble exponent, base CLIP
    weights), so a config that names the card gets them without repeating them; a value the config sets wins. A card
    whose architecture differs from the configured one is refused: its weights would not load, or worse, half load.
    Idempotent.
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

    def pick(value: Any, card: Any, field_name: str, fallback: Any) -> Any:
        if value is not None:
            return value
        from_card = getattr(card, field_name, None) if card is not None else None
        return from_card if from_card is not None else fallback

    generator = dataclasses.replace(config.generator, input_short_side=pick(
        config.generator.input_short_side, gen_card, "input_short_side", FALLBACK_GENERATOR_SHORT_SIDE))
    classifier = dataclasses.replace(
        config.classifier,
        input_short_side=pick(config.classifier.input_short_side, cls_card, "input_short_side",
                              FALLBACK_CLASSIFIER_SHORT_SIDE),
        pretrained=pick(config.classifier.pretrained, cls_card, "base_clip_pretrained", None),
    )
    alpha = pick(config.ensemble_alpha, cls_card, "ensemble_alpha", FALLBACK_ENSEMBLE_ALPHA)
    return dataclasses.replace(config, generator=generator, classifier=classifier, ensemble_alpha=alpha)


def _card(name: Optional[str]) -> Any:
    if not name:
        return None
    from ovs_ros.models.cards import ModelCard
    from ovs_ros.paths import resolve_data_path

    try:
        return ModelCard.from_yaml(resolve_data_path(name, "models"))
    except FileNotFoundError as exc:
        raise ConfigError(f"model card {name!r}: {exc}") from exc
