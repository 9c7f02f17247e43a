"""CLIP mask classifier: open_clip towers, MaskCLIP++ mask tokens (ViT/EVA) and mask pooling (ConvNeXt), PSMs."""
from .config import ClipClassifierConfig
from .convert import (
    convert_maskclippp_convnext_state_dict,
    convert_maskclippp_eva_state_dict,
    load_maskclippp_checkpoint,
    load_ovs_classifier_checkpoint,
    maskclippp_checkpoint_family,
)
from .convert_text import load_maskclippp_text_tower, split_maskclippp_text_state_dict
from .psm import (
    CDTPSM,
    PSM_KINDS,
    IdentityPSM,
    LinearPSM,
    PseudoTextPSM,
    build_psm,
    mask_class_logits,
    patch_grid_of,
    scaled_cosine,
)
from .towers import ClipClassifier, MaskEmbeddingOutput, build_open_clip_model, detect_family
from .tiny import TINY_FAMILIES, build_tiny_classifier

__all__ = [
    "PSM_KINDS",
    "CDTPSM",
    "TINY_FAMILIES",
    "build_psm",
    "build_tiny_classifier",
    "ClipClassifier",
    "ClipClassifierConfig",
    "IdentityPSM",
    "LinearPSM",
    "MaskEmbeddingOutput",
    "PseudoTextPSM",
    "build_open_clip_model",
    "convert_maskclippp_convnext_state_dict",
    "convert_maskclippp_eva_state_dict",
    "detect_family",
    "load_maskclippp_checkpoint",
    "load_maskclippp_text_tower",
    "load_ovs_classifier_checkpoint",
    "maskclippp_checkpoint_family",
    "mask_class_logits",
    "patch_grid_of",
    "scaled_cosine",
    "split_maskclippp_text_state_dict",
]
