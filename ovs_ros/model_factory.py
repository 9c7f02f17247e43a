"""Builds the Segmenter's models from a `SegmenterConfig`: explicit functions, no registries (house rule 2)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ovs_ros.models.cards import ModelCard, resolve_weights
from ovs_ros.paths import resolve_data_path
from ovs_ros.segmenter_config import ClassifierSettings, GeneratorSettings, SegmenterConfig

LOG = logging.getLogger(__name__)


@dataclass
class LoadedModels:
    generator: nn.Module
    classifier: nn.Module
    psm: nn.Module
    template_set: Optional[str]  # set when PSM weights are loaded: the templates they were trained with
    uses_pretrained_weights: bool
    device: torch.device
    dtype: torch.dtype = torch.float32  # the precision the models run in (config precision resolved for the device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def load_card(name_or_path: str) -> ModelCard:
    return ModelCard.from_yaml(resolve_data_path(name_or_path, "models"))


def build_generator(settings: GeneratorSettings, weights_dir: Optional[Path]) -> tuple:
    """-> (generator, loaded_real_weights)."""
    import dataclasses

    from ovs_ros.models.mask2former import (
        Mask2FormerConfig,
        Mask2FormerGenerator,
        load_generator_checkpoint,
        load_training_synonyms,
    )

    family, _, variant = settings.architecture.partition("/")
    if family == "fcclip":  # FC-CLIP generator (ovs_ros/models/fcclip/factory.py)
        from ovs_ros.models.fcclip.factory import build_fcclip_generator

        return build_fcclip_generator(
            variant, training_vocabulary=settings.training_vocabulary, checkpoint=settings.checkpoint,
            random_seed=settings.random_seed,
            card_weights=lambda: resolve_weights(load_card(settings.card), weights_dir) if settings.card else None)
    if family == "maftp":  # MAFT+ generator: FC-CLIP + CDT (ovs_ros/models/maftp/factory.py)
        from ovs_ros.models.maftp.factory import build_maftp_generator

        return build_maftp_generator(
            variant, training_vocabulary=settings.training_vocabulary, checkpoint=settings.checkpoint,
            random_seed=settings.random_seed,
            card_weights=lambda: resolve_weights(load_card(settings.card), weights_dir) if settings.card else None)
    if family != "mask2former":
        raise ValueError(f"unknown generator architecture {settings.architecture!r} (expected mask2former/<variant>, "
                         "fcclip/<variant> or maftp/<variant>)")
    if variant == "tiny":
        synonyms = load_training_synonyms(settings.training_vocabulary)
        config = dataclasses.replace(
            Mask2FormerConfig.tiny(num_classes=len(synonyms)), class_names=[], class_synonyms=synonyms
        )
    else:
        factory = getattr(Mask2FormerConfig, variant, None)
        if factory is None:
            raise ValueError(f"unknown Mask2Former variant {variant!r}")
        config = factory()
    checkpoint = settings.checkpoint
    if checkpoint is None and settings.card:
        checkpoint = str(resolve_weights(load_card(settings.card), weights_dir))
    if checkpoint is not None:
        return load_generator_checkpoint(checkpoint, config), True
    torch.manual_seed(settings.random_seed)
    return Mask2FormerGenerator(config), False


def build_classifier(settings: ClassifierSettings, weights_dir: Optional[Path]) -> tuple:
    """-> (classifier, psm, template_set or None, loaded_real_weights)."""
    from ovs_ros.models.fcclip.factory import OUT_OF_VOCABULARY_CLASSIFIER, FCCLIPOutOfVocabularyClassifier

    if settings.model_name == OUT_OF_VOCABULARY_CLASSIFIER:  # FC-CLIP alone: its own branch, same backbone pass
        return FCCLIPOutOfVocabularyClassifier(), nn.Identity(), None, True
    from ovs_ros.models.clip import (
        ClipClassifier,
        ClipClassifierConfig,
        build_psm,
        build_tiny_classifier,
        load_maskclippp_checkpoint,
        load_ovs_classifier_checkpoint,
    )

    checkpoint = settings.checkpoint
    card = load_card(settings.card) if settings.card else None
    if checkpoint is None and card is not None:
        checkpoint = str(resolve_weights(card, weights_dir))
    meta = _ovs_metadata(checkpoint) if checkpoint is not None and card is None else {}  # a bare file: read once
    options = dict(settings.options, **_teva_options(card, meta))
    torch.manual_seed(settings.random_seed)
    if settings.model_name.startswith("tiny-"):
        classifier = build_tiny_classifier(
            settings.model_name[len("tiny-"):], input_short_side=settings.input_short_side, seed=settings.random_seed,
            **options)
    else:
        classifier = ClipClassifier(
            ClipClassifierConfig(
                model_name=settings.model_name,
                pretrained=settings.pretrained,
                input_short_side=settings.input_short_side,
                **options,
            )
        )
    psm_dims = dict(text_dim=classifier.embed_dim, image_dim=classifier.embed_dim)
    if checkpoint is None:
        psm = build_psm(settings.psm, **psm_dims)
        if settings.psm == "identity":
            LOG.warning("no fine-tuned MaskCLIP++ weights: identity similarity "
                        "(cosine x logit scale, mean over templates)")
        return classifier, psm, None, settings.pretrained is not None
    if card is not None:
        fmt = card.format
    else:  # our own exports say so in their safetensors metadata; anything else is a MaskCLIP++ file
        fmt = "ovs_safetensors" if meta.get("format") == "ovs_safetensors" else "maskclippp_pth"
    prior = getattr(card, "mask_prior_blocks", None)
    if prior is not None and prior != getattr(classifier, "mask_prior_blocks", prior):
        raise ValueError(f"classifier card {card.name}: its weights were trained with mask tokens in the last {prior} "
                         f"blocks, the classifier puts them in the last {classifier.mask_prior_blocks}")
    psm_kind, templates = _psm_of(card, meta, checkpoint, settings)
    psm = build_psm(psm_kind, num_templates=_num_templates(templates), **psm_dims)
    # maskclippp_pth: load_maskclippp_checkpoint picks the EVA or ConvNeXt key map from the classifier's family.
    loaders = {"ovs_safetensors": load_ovs_classifier_checkpoint, "maskclippp_pth": load_maskclippp_checkpoint}
    if fmt not in loaders:
        raise ValueError(f"classifier checkpoint {checkpoint}: format {fmt!r} is not a classifier format "
                         f"({sorted(loaders)})")
    loaders[fmt](classifier, psm, checkpoint)
    if settings.pretrained is None:
        LOG.warning("classifier checkpoint %s holds the fine-tuned visual tower, mask scale and PSM, but no base CLIP "
                    "weights are configured (classifier.pretrained, or the card's base_clip_pretrained): the text "
                    "tower and CLIP's logit scale are random", checkpoint)
    return classifier, psm, templates, settings.pretrained is not None


def _teva_options(card: Optional[ModelCard], meta: dict) -> dict:
    """TeVA weights build a TeVA classifier: its settings and mask-token depth come from the card (or the file's
    own metadata), since the architecture belongs to the weights."""
    import json

    teva = card.teva if card is not None else (json.loads(meta["teva"]) if meta.get("teva") else None)
    if not teva:
        return {}
    prior = card.mask_prior_blocks if card is not None else json.loads(meta.get("mask_prior_blocks", "null"))
    out = {"teva": dict(teva, enabled=True)}
    if prior is not None:
        out["mask_prior_blocks"] = int(prior)
    return out


def _ovs_metadata(path: str) -> dict:
    if str(path).endswith(".safetensors") and Path(path).is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    return {}


def _psm_of(card: Optional[ModelCard], meta: dict, checkpoint: str, settings: ClassifierSettings) -> tuple:
    """(PSM kind, template set) of a fine-tuned checkpoint: its card says, else an ovs_safetensors file's own
    metadata (written by ovs_training's export); with neither, a clear error. The template set belongs to the
    weights."""
    if card is not None and card.psm:
        return card.psm, card.template_set
    if meta.get("model_name") and meta["model_name"] != settings.model_name:
        raise ValueError(f"{checkpoint} was exported from {meta['model_name']!r}, but the config builds "
                         f"{settings.model_name!r}")
    if meta.get("psm"):
        return meta["psm"], meta.get("template_set") or None
    raise ValueError(f"classifier checkpoint {checkpoint} has no model card and no PSM metadata: set classifier.card "
                     "to a card (models/*.yaml) that names its PSM and template set")


def _num_templates(template_set: Optional[str]) -> Optional[int]:
    from ovs_ros.templates import TEMPLATES

    return len(TEMPLATES[template_set]) if template_set else None


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def keep_fp32_islands(module: nn.Module) -> nn.Module:
    """Cast back to fp32 every submodule that says it must run there (`runs_in_fp32 = True`, e.g. Mask2Former's
    deformable pixel decoder, which the reference runs with autocast off); it casts its inputs and outputs itself."""
    for sub in module.modules():
        if getattr(sub, "runs_in_fp32", False):
            sub.float()
    return module


def build_models(config: SegmenterConfig) -> LoadedModels:
    device = resolve_device(config.device)
    from ovs_ros.segmenter_config import resolve_precision

    precision = resolve_precision(config.precision, device.type, fallback=config.precision_fallback)
    weights_dir = Path(config.weights_dir).expanduser() if config.weights_dir else None
    generator, generator_real = build_generator(config.generator, weights_dir)
    classifier, psm, template_set, classifier_real = build_classifier(config.classifier, weights_dir)
    dtype = DTYPES[precision]
    generator = keep_fp32_islands(generator.to(device=device, dtype=dtype)).eval()
    classifier = keep_fp32_islands(classifier.to(device=device, dtype=dtype)).eval()
    psm = psm.to(device=device).eval()  # similarity runs in fp32: a [Q, S, T] cosine is tiny and precision-sensitive
    LOG.info(
        "models ready on %s (%s): generator %s (%s weights), classifier %s (%s weights), psm %s",
        device, precision, config.generator.architecture, "real" if generator_real else "random",
        config.classifier.model_name, "real" if classifier_real else "random", type(psm).__name__,
    )
    return LoadedModels(
        generator=generator,
        classifier=classifier,
        psm=psm,
        template_set=template_set,
        uses_pretrained_weights=generator_real and classifier_real,
        device=device,
        dtype=dtype,
    )
