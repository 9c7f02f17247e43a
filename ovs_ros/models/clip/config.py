"""Typed configuration of the CLIP mask classifier (one flat dataclass; unknown YAML keys fail in `config_utils`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class TevaConfig:
    """`ClipClassifierConfig.teva`: off by default (the MaskCLIP++ path, bit-identical).

    Attributes:
        enabled: build TeVA; `encode_masks` then needs the target text embeddings.
        rank: width r of g_q, g_k, g_v, g_o.
        adapter_hidden: channels of the Distribution Adapter's hidden map.
        adapter_grid_factor: adapter / mask-rule cells per patch side (the patch size = full CLIP resolution).
    """

    enabled: bool = False
    rank: int = 16
    adapter_hidden: int = 8
    adapter_grid_factor: int = 4

    def __post_init__(self) -> None:
        if self.rank < 1 or self.adapter_hidden < 1 or self.adapter_grid_factor < 1:
            raise ValueError(f"teva rank, adapter_hidden and adapter_grid_factor must be >= 1, got {self.rank}, "
                             f"{self.adapter_hidden}, {self.adapter_grid_factor}")

    def card_dict(self) -> dict:
        """What a model card records so the runtime builds the same TeVA."""
        return {"rank": self.rank, "adapter_hidden": self.adapter_hidden,
                "adapter_grid_factor": self.adapter_grid_factor}


@dataclass
class ClipClassifierConfig:
    """What `ClipClassifier` builds.

    Attributes:
        model_name: open_clip architecture name (`EVA02-B-16`, `EVA02-L-14-336`, `ViT-B-16`, `ViT-L-14-336`,
            `convnext_base_w_320`, `convnext_large_d_320`); a label only when `open_clip_model_cfg` is given.
        pretrained: open_clip tag or local checkpoint path; None = random weights (tests, offline demo).
        input_short_side: short side of the CLIP branch input in pixels (corrections.md 15: EVA-B 384, EVA-L 392,
            ConvNeXt-B 512, ConvNeXt-L 640). The classifier does not resize; the pre-processing reads this.
        mask_prior_blocks: ViT families: the Q mask tokens enter the last N blocks (MaskCLIP++ uses 3).
        mask_logit_scale_init: initial log of the per-(block, head) mask bias scale (MaskCLIP++: -5.0).
        quick_gelu: open_clip `force_quick_gelu` (the OpenAI `openai` tags need it; timm towers ignore it).
        open_clip_model_cfg: optional architecture dict in open_clip's JSON layout (`embed_dim`, `vision_cfg`,
            `text_cfg`, optional `custom_text`); used instead of the built-in config named by `model_name`,
            e.g. for tiny test models.
        teva: FISA / FOV-Seg TeVA on the mask tokens (`teva.py`); off = the MaskCLIP++ mask tokens. A dict is
            read as `TevaConfig` fields.
    """

    model_name: str
    pretrained: Optional[str] = None
    input_short_side: int = 384
    mask_prior_blocks: int = 3
    mask_logit_scale_init: float = -5.0
    quick_gelu: bool = False
    open_clip_model_cfg: Optional[Dict[str, Any]] = None
    teva: TevaConfig = field(default_factory=TevaConfig)

    def __post_init__(self) -> None:
        if isinstance(self.teva, dict):
            self.teva = TevaConfig(**self.teva)
        if self.teva is None:
            self.teva = TevaConfig()
        if self.mask_prior_blocks < 1:
            raise ValueError(f"mask_prior_blocks must be >= 1, got {self.mask_prior_blocks}")
        if self.input_short_side < 1:
            raise ValueError(f"input_short_side must be >= 1, got {self.input_short_side}")
