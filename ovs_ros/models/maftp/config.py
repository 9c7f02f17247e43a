"""Architecture config of the MAFT+ generator (jiaosiyu1999/MAFT-Plus @fd12806).

MAFT+ is FC-CLIP (`maft/modeling/*` is FC-CLIP's code; the decoder differs by a no-op `flatten`) with three changes
that matter at inference (`maft/maft_plus.py`):
1. the CLIP-V trunk is fine-tuned (stem, stages, norm_pre; the released `.pth` holds it), the text tower is frozen;
2. the Content-Dependent Transfer (`cdt.py`) makes the text classifier of the out-of-vocabulary branch
   image-dependent;
3. classification is the out-of-vocabulary (CLIP) branch alone: "in_vocab is not used !!!" (`maft_plus.py:383-393`),
   the decoder's logits only give the void probability (`GEOMETRIC_ENSEMBLE_ALPHA/BETA -1`, no ensemble).
Its eval configs inherit `maskformer2_R50_bs16_50ep.yaml`: 100 queries, merge thresholds 0.2 / 0.7, and no INPUT
override, so detectron2's test size 800 / 1333.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ovs_ros.models.fcclip.config import (
    CONVNEXT_STAGE_CHANNELS,
    TINY_OPEN_CLIP_CFG,
    TINY_TIMM_KWARGS,
    FCCLIPConfig,
)

COCO_STUFF_TRAINING_VOCABULARY = "coco_stuff_171"  # maftp_b / maftp_l: openvocab_coco_2017_train_stuff_sem_seg
COCO_PANOPTIC_TRAINING_VOCABULARY = "coco_panoptic"  # maftp_l_pano: coco_seg_pan_voab


@dataclass
class MAFTPlusConfig(FCCLIPConfig):
    """FC-CLIP's fields (MAFT+'s values as defaults) plus the CDT's (`MODEL.cdt_params`, `TEST.PANOPTIC_ON`)."""

    num_queries: int = 100  # MAFT+ eval configs (maskformer2_R50_bs16_50ep.yaml: NUM_OBJECT_QUERIES 100)
    geometric_ensemble_alpha: float = 1.0  # -1 in MAFT+'s configs: no ensemble, CLIP logits only (= exponent 1)
    geometric_ensemble_beta: float = 1.0
    object_mask_threshold: float = 0.2
    overlap_threshold: float = 0.7
    cdt_dim: int = 768  # cdt_params[0] (maft/config.py default [768, 8]; train_semantic_base.yaml [640, 8])
    cdt_heads: int = 8  # cdt_params[1]
    cdt_panoptic: bool = True  # the panoptic residual t + LN(W A + b); False: LN(t + W A + b)

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.cdt_dim) <= 0 or int(self.cdt_heads) <= 0:
            raise ValueError(f"cdt_dim and cdt_heads must be positive, got {self.cdt_dim}, {self.cdt_heads}")

    # ---------------------------------------------------------------- named architectures
    @classmethod
    def tiny(cls, training_vocabulary: Union[str, Path] = COCO_PANOPTIC_TRAINING_VOCABULARY, *,
             class_synonyms: Optional[list] = None, num_queries: int = 7, panoptic: bool = True) -> "MAFTPlusConfig":
        """FC-CLIP's tiny test architecture (64-d CLIP) with a 64-d, 8-head CDT; random weights."""
        return cls(
            clip_model_name="tiny-convnext",
            open_clip_model_cfg=copy.deepcopy(TINY_OPEN_CLIP_CFG),
            timm_kwargs=copy.deepcopy(TINY_TIMM_KWARGS),
            stage_channels=tuple(TINY_TIMM_KWARGS["dims"]),
            training_vocabulary=str(training_vocabulary),
            class_synonyms=class_synonyms or [],
            pixel_decoder_dim=32, mask_dim=32, encoder_layers=2, encoder_num_heads=4, encoder_ffn_dim=1024,
            hidden_dim=32, num_queries=num_queries, decoder_layers=3, decoder_num_heads=4, dim_feedforward=64,
            cdt_dim=int(TINY_OPEN_CLIP_CFG["embed_dim"]), cdt_heads=8, cdt_panoptic=panoptic,
        )

    @classmethod
    def tiny_semantic(cls, training_vocabulary: Union[str, Path] = COCO_PANOPTIC_TRAINING_VOCABULARY
                      ) -> "MAFTPlusConfig":
        return cls.tiny(training_vocabulary, panoptic=False)

    @classmethod
    def convnext_base_w_320(cls, training_vocabulary: Union[str, Path] = COCO_STUFF_TRAINING_VOCABULARY
                            ) -> "MAFTPlusConfig":
        """MAFT+-B (`maftp_b.pth`, configs/semantic/train_semantic_base.yaml): open_clip `convnext_base_w_320`,
        CDT [640, 8], semantic residual, trained on COCO-Stuff."""
        return cls(clip_model_name="convnext_base_w_320", stage_channels=CONVNEXT_STAGE_CHANNELS["convnext_base"],
                   training_vocabulary=str(training_vocabulary), cdt_dim=640, cdt_heads=8, cdt_panoptic=False)

    @classmethod
    def convnext_large_d_320(cls, training_vocabulary: Union[str, Path] = COCO_STUFF_TRAINING_VOCABULARY
                             ) -> "MAFTPlusConfig":
        """MAFT+-L (`maftp_l.pth`, configs/semantic/eval.yaml): `convnext_large_d_320`, CDT [768, 8], semantic
        residual, trained on COCO-Stuff."""
        return cls(clip_model_name="convnext_large_d_320", stage_channels=CONVNEXT_STAGE_CHANNELS["convnext_large"],
                   training_vocabulary=str(training_vocabulary), cdt_dim=768, cdt_heads=8, cdt_panoptic=False)

    @classmethod
    def convnext_large_d_320_pan(cls, training_vocabulary: Union[str, Path] = COCO_PANOPTIC_TRAINING_VOCABULARY
                                 ) -> "MAFTPlusConfig":
        """MAFT+-L-pan (`maftp_l_pano.pth`, configs/panoptic/eval.yaml: PANOPTIC_ON, cdt_params default
        [768, 8]): `convnext_large_d_320`, panoptic residual, trained on COCO panoptic."""
        return cls(clip_model_name="convnext_large_d_320", stage_channels=CONVNEXT_STAGE_CHANNELS["convnext_large"],
                   training_vocabulary=str(training_vocabulary), cdt_dim=768, cdt_heads=8, cdt_panoptic=True)
