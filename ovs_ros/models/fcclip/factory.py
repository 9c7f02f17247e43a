"""Builds an FC-CLIP generator from the Segmenter's generator settings (`architecture: fcclip/<variant>`), and the
out-of-vocabulary "classifier" role of the FC-CLIP-alone profile (`classifier.model_name: fcclip`).

Variants: `tiny` (the reference fixture's tiny architecture, random weights, for tests), `convnext_base_w_320`
(FC-CLIP-B) and `convnext_large_d_320` (FC-CLIP-L). Real weights come from the released `.pth` named by the
generator card (or `checkpoint`); it holds the whole CLIP, so no open_clip download is needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .config import FCCLIPConfig
from .convert import load_fcclip_checkpoint
from .generator import FCCLIPGenerator

VARIANTS = ("tiny", "convnext_base_w_320", "convnext_large_d_320")
OUT_OF_VOCABULARY_CLASSIFIER = "fcclip"  # classifier.model_name of the FC-CLIP-alone profile


def fcclip_config(variant: str, training_vocabulary: str) -> FCCLIPConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown FC-CLIP variant {variant!r}; choose from {VARIANTS}")
    return getattr(FCCLIPConfig, variant)(training_vocabulary)


def build_fcclip_generator(variant: str, *, training_vocabulary: str, checkpoint: Optional[str], random_seed: int,
                           card_weights: Callable[[], Optional[Path]]) -> tuple[nn.Module, bool]:
    """-> (generator, loaded_real_weights). `card_weights()` resolves the card's file (None without a card); it is
    called only when no explicit `checkpoint` is set."""
    config = fcclip_config(variant, training_vocabulary)
    path = checkpoint if checkpoint is not None else card_weights()
    if path is not None:
        return load_fcclip_checkpoint(path, config), True
    torch.manual_seed(random_seed)
    return FCCLIPGenerator(config), False


class FCCLIPOutOfVocabularyClassifier(nn.Module):
    """The classifier role played by FC-CLIP's own out-of-vocabulary branch (the fast `fcclip_b` profile): it owns no
    weights and runs nothing; its embeddings come from the generator's single backbone pass
    (`FCCLIPOutput.clip_mask_embeddings`). The Segmenter recognises it by `uses_generator_pass`."""

    uses_generator_pass = True
    family = "fcclip"
    size_divisibility = 32  # no CLIP branch runs: these only satisfy the Segmenter's branch specs
    pixel_mean_01 = (0.48145466, 0.4578275, 0.40821073)
    pixel_std_01 = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self) -> None:
        super().__init__()
        self.config = None
