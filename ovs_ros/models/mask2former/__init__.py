"""Mask2Former mask generator: Swin backbone, MSDeformAttn pixel decoder, masked-attention transformer decoder, and
checkpoint converters (Hugging Face, detectron2)."""
from .config import TRAINING_VOCABULARY, Mask2FormerConfig, load_training_synonyms
from .convert import (
    convert_detectron2_state_dict,
    convert_hf_state_dict,
    convert_state_dict,
    load_generator_checkpoint,
    to_detectron2_state_dict,
)
from .generator import GeneratorOutput, Mask2FormerGenerator

__all__ = [
    "TRAINING_VOCABULARY",
    "GeneratorOutput",
    "Mask2FormerConfig",
    "Mask2FormerGenerator",
    "convert_detectron2_state_dict",
    "convert_hf_state_dict",
    "convert_state_dict",
    "load_training_synonyms",
    "load_generator_checkpoint",
    "to_detectron2_state_dict",
]
