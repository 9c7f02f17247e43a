"""Builds a MAFT+ generator from the Segmenter's generator settings (`architecture: maftp/<variant>`).

Variants: `tiny` / `tiny_semantic` (FC-CLIP's tiny test architecture with a panoptic / semantic CDT, random weights,
training vocabulary from the settings), `convnext_base_w_320` (MAFT+-B, `maftp_b.pth`), `convnext_large_d_320`
(MAFT+-L, `maftp_l.pth`) and `convnext_large_d_320_pan` (MAFT+-L-pan, `maftp_l_pano.pth`). A released variant's
training vocabulary is that of its weights (COCO-Stuff for B and L, COCO panoptic for L-pan), whatever the
settings say. Real weights come from the released `.pth` named by the generator card (or `checkpoint`); it holds
the whole fine-tuned CLIP, so no open_clip download is needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .config import MAFTPlusConfig
from .convert import load_maftp_checkpoint
from .generator import MAFTPlusGenerator

TINY_VARIANTS = ("tiny", "tiny_semantic")
VARIANTS = TINY_VARIANTS + ("convnext_base_w_320", "convnext_large_d_320", "convnext_large_d_320_pan")


def maftp_config(variant: str, training_vocabulary: str) -> MAFTPlusConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown MAFT+ variant {variant!r}; choose from {VARIANTS}")
    factory = getattr(MAFTPlusConfig, variant)
    return factory(training_vocabulary) if variant in TINY_VARIANTS else factory()


def build_maftp_generator(variant: str, *, training_vocabulary: str, checkpoint: Optional[str], random_seed: int,
                          card_weights: Callable[[], Optional[Path]]) -> tuple[nn.Module, bool]:
    """-> (generator, loaded_real_weights). `card_weights()` resolves the card's file (None without a card); it is
    called only when no explicit `checkpoint` is set."""
    config = maftp_config(variant, training_vocabulary)
    path = checkpoint if checkpoint is not None else card_weights()
    if path is not None:
        return load_maftp_checkpoint(path, config), True
    torch.manual_seed(random_seed)
    return MAFTPlusGenerator(config), False
