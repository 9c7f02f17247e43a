"""Architecture config of the Mask2Former mask generator (Swin backbone, MSDeformAttn pixel decoder, masked-attention
transformer decoder).

Defaults follow detectron2's Mask2Former COCO-panoptic configs (facebookresearch/Mask2Former @9b0651c,
`configs/coco/panoptic-segmentation/swin/*.yaml`); the named constructors give the architectures of the released
`facebook/mask2former-swin-*-coco-panoptic` checkpoints. Inference only: dropout and drop-path are not modelled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

TRAINING_VOCABULARY = "coco_panoptic"  # the released checkpoints' closed vocabulary, in config/vocabularies/


def load_training_synonyms(vocabulary: Union[str, Path] = TRAINING_VOCABULARY) -> list[list[str]]:
    """Synonym lists of a generator's training classes, from a vocabulary YAML (`classes: [{names: [...]}, ...]`)
    shipped in `config/vocabularies/` (a bare name) or any path. Plain YAML: model code stays free of the node."""
    import yaml

    from ovs_ros.paths import resolve_data_path

    path = resolve_data_path(vocabulary, "config/vocabularies")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: no 'classes' list")
    synonyms = []
    for index, entry in enumerate(classes):
        names = entry.get("names") if isinstance(entry, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"{path}: class #{index} has no valid 'names' list")
        synonyms.append([n.strip() for n in names])
    return synonyms


@dataclass
class Mask2FormerConfig:
    """Mask2Former generator architecture. Field names follow detectron2 where they exist (`MODEL.SWIN.*`,
    `MODEL.SEM_SEG_HEAD.*`, `MODEL.MASK_FORMER.*`); the Swin per-stage head counts are `num_heads`, so the two
    transformers' head counts are `encoder_num_heads` (pixel decoder) and `decoder_num_heads`."""

    # --- vocabulary ---
    num_classes: int  # closed training vocabulary size K_train (133 for COCO panoptic); class logits have K_train + 1
    class_names: list[str] = field(default_factory=list)  # first name of each training class, len == num_classes;
    #                                                      empty -> placeholders "class_<i>"
    class_synonyms: list[list[str]] = field(default_factory=list)  # all names per training class (seen/unseen
    #                                      overlap, corrections.md 10); empty -> [[name] for name in class_names]

    # --- Swin backbone (MODEL.SWIN.*) ---
    embed_dim: int = 96  # channels of stage 1; stage i has embed_dim * 2**i
    depths: tuple[int, ...] = (2, 2, 6, 2)  # Swin blocks per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # attention heads per Swin stage
    window_size: int = 7  # side of the square attention window, in stage tokens
    mlp_ratio: float = 4.0  # Swin MLP hidden width / block width
    patch_size: int = 4  # side of the patch-embedding convolution (stride of stage 1)
    qkv_bias: bool = True  # bias on the fused q/k/v projection of the Swin blocks
    drop_path_rate: float = 0.0  # recorded for completeness; inference only, so never applied
    layer_norm_eps: float = 1e-5  # eps of every Swin LayerNorm

    # --- MSDeformAttn pixel decoder (MODEL.SEM_SEG_HEAD.*) ---
    pixel_decoder_dim: int = 256  # CONVS_DIM: width of the pixel decoder (deformable encoder and FPN)
    mask_dim: int = 256  # MASK_DIM: channels of the stride-4 mask features
    encoder_layers: int = 6  # TRANSFORMER_ENC_LAYERS: deformable encoder layers
    encoder_num_heads: int = 8  # heads of the deformable attention
    encoder_ffn_dim: int = 1024  # FFN width of the deformable encoder (hard-coded 1024 in detectron2)
    num_feature_levels: int = 3  # backbone levels fed to the deformable encoder (strides 8, 16, 32)
    n_points: int = 4  # sampling points per head and level
    common_stride: int = 4  # stride of the mask features; FPN levels are added down to this stride
    norm_groups: int = 32  # GroupNorm groups in the pixel decoder

    # --- masked-attention transformer decoder (MODEL.MASK_FORMER.*) ---
    hidden_dim: int = 256  # HIDDEN_DIM: query width
    num_queries: int = 100  # NUM_OBJECT_QUERIES (200 for the Swin-L COCO-panoptic model)
    decoder_layers: int = 9  # DEC_LAYERS - 1 (the config's 10 counts the prediction on the initial queries)
    decoder_num_heads: int = 8  # NHEADS
    dim_feedforward: int = 2048  # DIM_FEEDFORWARD
    pre_norm: bool = False  # PRE_NORM: LayerNorm before (True) or after (False) each sub-layer
    enforce_input_projection: bool = False  # ENFORCE_INPUT_PROJ: 1x1 conv on decoder inputs even if widths match

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if self.class_synonyms and not self.class_names:
            self.class_names = [names[0] for names in self.class_synonyms]
        self.class_names = list(self.class_names) or [f"class_{i}" for i in range(self.num_classes)]
        self.class_synonyms = [list(n) for n in self.class_synonyms] or [[name] for name in self.class_names]
        if len(self.class_synonyms) != len(self.class_names):
            raise ValueError(
                f"class_synonyms has {len(self.class_synonyms)} entries, class_names {len(self.class_names)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes is {self.num_classes}"
            )
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must have the same length")
        if len(self.depths) < self.num_feature_levels:
            raise ValueError(f"{len(self.depths)} Swin stages cannot feed num_feature_levels={self.num_feature_levels}")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"Swin stage {i} width {self.embed_dim * 2**i} not divisible by {heads} heads")
        if self.pixel_decoder_dim % self.encoder_num_heads or self.pixel_decoder_dim % self.norm_groups:
            raise ValueError(
                f"pixel_decoder_dim {self.pixel_decoder_dim} must be divisible by encoder_num_heads "
                f"{self.encoder_num_heads} and norm_groups {self.norm_groups}"
            )
        if self.hidden_dim % self.decoder_num_heads:
            raise ValueError(
                f"hidden_dim {self.hidden_dim} not divisible by decoder_num_heads {self.decoder_num_heads}"
            )

    @property
    def backbone_channels(self) -> tuple[int, ...]:
        """Channels of the Swin stage outputs (strides 4, 8, 16, 32)."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def size_divisibility(self) -> int:
        """Inputs must be padded to a multiple of this (the stride of the last Swin stage)."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---------------------------------------------------------------- named architectures
    @classmethod
    def tiny(cls, num_classes: int = 8) -> "Mask2FormerConfig":
        """A small random-weight architecture for tests: a CPU forward at 128x128 takes a few tens of ms."""
        return cls(
            num_classes=num_classes,
            embed_dim=32,
            depths=(1, 1, 2, 1),
            num_heads=(1, 2, 4, 8),
            window_size=7,
            pixel_decoder_dim=64,
            mask_dim=64,
            encoder_layers=1,
            encoder_num_heads=4,
            encoder_ffn_dim=128,
            hidden_dim=64,
            num_queries=20,
            decoder_layers=3,
            decoder_num_heads=4,
            dim_feedforward=128,
        )

    @classmethod
    def _coco_panoptic(cls, vocabulary: Union[str, Path], **swin: Any) -> "Mask2FormerConfig":
        synonyms = load_training_synonyms(vocabulary)
        return cls(num_classes=len(synonyms), class_synonyms=synonyms, **swin)

    @classmethod
    def swin_tiny_coco_panoptic(cls, vocabulary: Union[str, Path] = TRAINING_VOCABULARY) -> "Mask2FormerConfig":
        """facebook/mask2former-swin-tiny-coco-panoptic (d2 `maskformer2_swin_tiny_bs16_50ep`)."""
        return cls._coco_panoptic(vocabulary, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                  window_size=7)

    @classmethod
    def swin_small_coco_panoptic(cls, vocabulary: Union[str, Path] = TRAINING_VOCABULARY) -> "Mask2FormerConfig":
        """facebook/mask2former-swin-small-coco-panoptic (d2 `maskformer2_swin_small_bs16_50ep`)."""
        return cls._coco_panoptic(vocabulary, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                                  window_size=7)

    @classmethod
    def swin_base_coco_panoptic(cls, vocabulary: Union[str, Path] = TRAINING_VOCABULARY) -> "Mask2FormerConfig":
        """facebook/mask2former-swin-base-coco-panoptic and -swin-base-IN21k-coco-panoptic (d2
        `maskformer2_swin_base_384_bs16_50ep` / `..._IN21k_384_...`): window 12, pretrained at 384."""
        return cls._coco_panoptic(vocabulary, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                                  window_size=12)

    @classmethod
    def swin_large_coco_panoptic(cls, vocabulary: Union[str, Path] = TRAINING_VOCABULARY) -> "Mask2FormerConfig":
        """facebook/mask2former-swin-large-coco-panoptic (d2 `maskformer2_swin_large_IN21k_384_bs16_100ep`): 200
        queries."""
        return cls._coco_panoptic(vocabulary, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                                  window_size=12, num_queries=200)

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> "Mask2FormerConfig":
        """From a transformers `Mask2FormerConfig` (Swin backbone only). Class names come from `id2label`."""
        backbone = hf_config.backbone_config
        if backbone is None or getattr(backbone, "model_type", None) != "swin":
            raise ValueError(f"only Swin backbones are supported, got {getattr(backbone, 'model_type', None)!r}")
        if getattr(backbone, "use_absolute_embeddings", False):
            raise ValueError("Swin absolute position embeddings are not supported")
        if getattr(backbone, "hidden_act", "gelu") != "gelu" or hf_config.activation_function != "relu":
            raise ValueError("only GELU Swin MLPs and ReLU decoder FFNs are supported")
        patch = backbone.patch_size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        num_labels = int(hf_config.num_labels)
        id2label = dict(getattr(hf_config, "id2label", None) or {})
        names = [str(id2label.get(i, id2label.get(str(i), f"class_{i}"))) for i in range(num_labels)]
        return cls(
            num_classes=num_labels,
            class_names=names,
            embed_dim=int(backbone.embed_dim),
            depths=tuple(backbone.depths),
            num_heads=tuple(backbone.num_heads),
            window_size=int(backbone.window_size),
            mlp_ratio=float(backbone.mlp_ratio),
            patch_size=int(patch),
            qkv_bias=bool(backbone.qkv_bias),
            drop_path_rate=float(backbone.drop_path_rate),
            layer_norm_eps=float(backbone.layer_norm_eps),
            pixel_decoder_dim=int(hf_config.feature_size),
            mask_dim=int(hf_config.mask_feature_size),
            encoder_layers=int(hf_config.encoder_layers),
            encoder_num_heads=int(hf_config.num_attention_heads),
            encoder_ffn_dim=int(hf_config.encoder_feedforward_dim),
            num_feature_levels=3,  # hard-coded in transformers' Mask2Former
            n_points=4,  # hard-coded in transformers' Mask2Former
            common_stride=int(hf_config.common_stride),
            norm_groups=32,
            hidden_dim=int(hf_config.hidden_dim),
            num_queries=int(hf_config.num_queries),
            decoder_layers=int(hf_config.decoder_layers) - 1,  # transformers keeps detectron2's DEC_LAYERS count
            decoder_num_heads=int(hf_config.num_attention_heads),
            dim_feedforward=int(hf_config.dim_feedforward),
            pre_norm=bool(hf_config.pre_norm),
            enforce_input_projection=bool(hf_config.enforce_input_projection),
        )
