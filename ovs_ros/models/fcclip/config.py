"""Architecture config of the FC-CLIP mask generator (bytedance/fc-clip @2b0bbe2).

FC-CLIP is Mask2Former on a *frozen* open_clip ConvNeXt: the CLIP's stages feed the MSDeformAttn pixel decoder and
the masked-attention decoder, whose class head is open-vocabulary (mask-pooled features -> MLP -> cosine with the
test vocabulary's text embeddings from the same CLIP, learned logit scale, learned void embedding). The same backbone
pass gives the out-of-vocabulary classifier (mask pooling on the CLIP's stride-32 features -> CLIP head).

Defaults are the released COCO-panoptic evaluation config
(`configs/coco/panoptic-segmentation/fcclip/fcclip_convnext_large_eval_coco.yaml` and its `_BASE_`s): 250 queries,
hidden 256, DEC_LAYERS 10 (9 rounds), 6 deformable encoder layers, ensemble alpha 0.4 / beta 0.8.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ovs_ros.models.mask2former.config import TRAINING_VOCABULARY, Mask2FormerConfig, load_training_synonyms

# detectron2 `MODEL.PIXEL_MEAN` / `PIXEL_STD` of FC-CLIP (0-255): OpenAI CLIP's mean / std times 255.
PIXEL_MEAN_255 = (122.7709383, 116.7460125, 104.09373615)
PIXEL_STD_255 = (68.5005327, 66.6321579, 70.32316305)

# Stage widths of the open_clip ConvNeXt trunks FC-CLIP supports (`fcclip/modeling/backbone/clip.py:44-50`).
CONVNEXT_STAGE_CHANNELS = {
    "convnext_base": (128, 256, 512, 1024),
    "convnext_large": (192, 384, 768, 1536),
    "convnext_xxlarge": (384, 768, 1536, 3072),
}

# The tiny architecture of `../shared/data/fixtures/fcclip_tiny_ref.pt` (its `open_clip` entry): an open_clip
# ConvNeXt CLIP with an MLP head (as convnext_large_d_320), a 1-block-per-stage trunk, a 2-layer text tower.
TINY_OPEN_CLIP_CFG: Dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"timm_model_name": "convnext_large", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "mlp", "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": 320},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}
TINY_TIMM_KWARGS: Dict[str, Any] = {"depths": [1, 1, 1, 1], "dims": [32, 64, 128, 256]}


@dataclass
class FCCLIPConfig:
    """FC-CLIP generator architecture. Field names follow FC-CLIP's detectron2 keys where they exist
    (`MODEL.FC_CLIP.*`, `MODEL.SEM_SEG_HEAD.*`, `MODEL.MASK_FORMER.*`)."""

    # --- frozen CLIP (MODEL.FC_CLIP.*) ---
    clip_model_name: str = "convnext_large_d_320"  # open_clip architecture (CLIP_MODEL_NAME); a label when
    #                                                 open_clip_model_cfg is given
    clip_pretrained: Optional[str] = None  # open_clip tag (CLIP_PRETRAINED_WEIGHTS); None = random, the released
    #                                        .pth holds the whole CLIP anyway
    open_clip_model_cfg: Optional[Dict[str, Any]] = None  # architecture dict in open_clip's JSON layout (tiny models)
    timm_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs for the trunk
    stage_channels: Tuple[int, ...] = CONVNEXT_STAGE_CHANNELS["convnext_large"]  # res2..res5 widths

    # --- training vocabulary (seen / unseen overlap, FC-CLIP `category_overlapping_mask`) ---
    training_vocabulary: str = TRAINING_VOCABULARY  # config/vocabularies/ name or path of the training classes
    class_synonyms: List[List[str]] = field(default_factory=list)  # empty -> read from training_vocabulary

    # --- MSDeformAttn pixel decoder (MODEL.SEM_SEG_HEAD.*) ---
    pixel_decoder_dim: int = 256  # CONVS_DIM
    mask_dim: int = 256  # MASK_DIM
    encoder_layers: int = 6  # TRANSFORMER_ENC_LAYERS
    encoder_num_heads: int = 8  # MASK_FORMER.NHEADS: the deformable encoder takes the decoder's head count
    encoder_ffn_dim: int = 1024  # hard-coded 1024 in msdeformattn.py
    n_points: int = 4  # DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS
    norm_groups: int = 32  # GroupNorm groups

    # --- masked-attention decoder (MODEL.MASK_FORMER.*) ---
    hidden_dim: int = 256  # HIDDEN_DIM
    num_queries: int = 250  # NUM_OBJECT_QUERIES (released FC-CLIP configs)
    decoder_layers: int = 9  # DEC_LAYERS - 1
    decoder_num_heads: int = 8  # NHEADS
    dim_feedforward: int = 2048  # DIM_FEEDFORWARD
    pre_norm: bool = False  # PRE_NORM

    # --- inference (MODEL.FC_CLIP.*, MODEL.MASK_FORMER.TEST.*) ---
    geometric_ensemble_alpha: float = 0.4  # exponent on the out-of-vocabulary (CLIP) probability, seen classes
    geometric_ensemble_beta: float = 0.8  # ... unseen classes
    object_mask_threshold: float = 0.0
    overlap_threshold: float = 0.8

    def __post_init__(self) -> None:
        self.stage_channels = tuple(int(c) for c in self.stage_channels)
        if len(self.stage_channels) != 4:
            raise ValueError(f"stage_channels must give the 4 ConvNeXt stage widths, got {self.stage_channels}")
        if not self.class_synonyms:
            self.class_synonyms = load_training_synonyms(self.training_vocabulary)
        self.class_synonyms = [list(names) for names in self.class_synonyms]
        for name in ("geometric_ensemble_alpha", "geometric_ensemble_beta", "object_mask_threshold",
                     "overlap_threshold"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.mask2former_config()  # validates the head sizes

    @property
    def class_names(self) -> List[str]:
        """First name of each training class (FC-CLIP's logits are over the *test* vocabulary, not these)."""
        return [names[0] for names in self.class_synonyms]

    @property
    def size_divisibility(self) -> int:
        """Inputs are padded to a multiple of this (FC-CLIP `SIZE_DIVISIBILITY`, the trunk's stride)."""
        return 32

    def mask2former_config(self) -> "ConvNeXtHeadConfig":
        """The config the shared Mask2Former pixel decoder and decoder layers are built from."""
        return ConvNeXtHeadConfig(
            num_classes=len(self.class_synonyms),
            class_synonyms=self.class_synonyms,
            stage_channels=self.stage_channels,
            pixel_decoder_dim=self.pixel_decoder_dim,
            mask_dim=self.mask_dim,
            encoder_layers=self.encoder_layers,
            encoder_num_heads=self.encoder_num_heads,
            encoder_ffn_dim=self.encoder_ffn_dim,
            n_points=self.n_points,
            norm_groups=self.norm_groups,
            hidden_dim=self.hidden_dim,
            num_queries=self.num_queries,
            decoder_layers=self.decoder_layers,
            decoder_num_heads=self.decoder_num_heads,
            dim_feedforward=self.dim_feedforward,
            pre_norm=self.pre_norm,
        )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    # ---------------------------------------------------------------- named architectures
    @classmethod
    def tiny(cls, training_vocabulary: Union[str, Path] = TRAINING_VOCABULARY, *,
             class_synonyms: Optional[List[List[str]]] = None, num_queries: int = 7) -> "FCCLIPConfig":
        """The fixture's tiny architecture (7 queries, hidden 32, 3 decoder rounds, 2 encoder layers)."""
        return cls(
            clip_model_name="tiny-convnext",
            open_clip_model_cfg=copy.deepcopy(TINY_OPEN_CLIP_CFG),
            timm_kwargs=copy.deepcopy(TINY_TIMM_KWARGS),
            stage_channels=tuple(TINY_TIMM_KWARGS["dims"]),
            training_vocabulary=str(training_vocabulary),
            class_synonyms=class_synonyms or [],
            pixel_decoder_dim=32, mask_dim=32, encoder_layers=2, encoder_num_heads=4, encoder_ffn_dim=1024,
            hidden_dim=32, num_queries=num_queries, decoder_layers=3, decoder_num_heads=4, dim_feedforward=64,
        )

    @classmethod
    def convnext_base_w_320(cls, training_vocabulary: Union[str, Path] = TRAINING_VOCABULARY) -> "FCCLIPConfig":
        """FC-CLIP-B (`fcclip_convnext_base_eval_*`): open_clip `convnext_base_w_320`
        (`laion_aesthetic_s13b_b82k_augreg`), linear projection head `visual.head.proj`."""
        return cls(clip_model_name="convnext_base_w_320", clip_pretrained=None,
                   stage_channels=CONVNEXT_STAGE_CHANNELS["convnext_base"],
                   training_vocabulary=str(training_vocabulary))

    @classmethod
    def convnext_large_d_320(cls, training_vocabulary: Union[str, Path] = TRAINING_VOCABULARY) -> "FCCLIPConfig":
        """FC-CLIP-L (`fcclip_convnext_large_eval_*`): open_clip `convnext_large_d_320`
        (`laion2b_s29b_b131k_ft_soup`), MLP projection head `visual.head.mlp`."""
        return cls(clip_model_name="convnext_large_d_320", clip_pretrained=None,
                   stage_channels=CONVNEXT_STAGE_CHANNELS["convnext_large"],
                   training_vocabulary=str(training_vocabulary))


@dataclass
class ConvNeXtHeadConfig(Mask2FormerConfig):
    """`Mask2FormerConfig` whose backbone is a ConvNeXt: the pixel decoder reads `backbone_channels` (the ConvNeXt
    stage widths) and the stride-4 patch stem; the Swin fields are unused."""

    stage_channels: Tuple[int, ...] = (192, 384, 768, 1536)

    @property
    def backbone_channels(self) -> Tuple[int, ...]:
        return tuple(self.stage_channels)
