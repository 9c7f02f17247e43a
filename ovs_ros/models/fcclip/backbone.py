"""FC-CLIP's frozen backbone: an open_clip ConvNeXt CLIP (`fcclip/modeling/backbone/clip.py`, class `CLIP`).

The visual trunk gives the four stages `res2`..`res5` (strides 4-32) to the pixel decoder and `clip_vis_dense`
(`trunk.norm_pre` of res5, stride 32) to the out-of-vocabulary branch; `trunk.head` + `head` turn a pooled `[C]`
vector into a CLIP embedding (FC-CLIP `visual_prediction_forward_convnext`). The text tower encodes the vocabulary.
The whole open_clip model is kept under `clip` (its state-dict names are the released file's
`backbone.clip_model.*` names minus that prefix).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .config import FCCLIPConfig


@dataclass
class ClipBackboneOutput:
    """feature_maps: res2..res5 `[B, C_i, H/s, W/s]` for s = 4, 8, 16, 32. clip_dense: `[B, C_5, H/32, W/32]`."""

    feature_maps: Tuple[Tensor, ...]
    clip_dense: Tensor


def _timm_tower(vision_cfg: dict, embed_dim: int, timm_kwargs: dict) -> nn.Module:
    """open_clip `TimmModel(pool='', proj='linear'|'mlp')` around a timm trunk built with extra kwargs (open_clip
    passes none), laid out exactly as open_clip builds it: `trunk` with its classifier reset, `head` projection."""
    import timm
    from open_clip.timm_model import TimmModel
    from timm.layers import Mlp, to_2tuple

    proj = vision_cfg.get("timm_proj", "linear")
    if vision_cfg.get("timm_pool", "avg") != "" or proj not in ("linear", "mlp"):
        raise NotImplementedError("FC-CLIP's ConvNeXt towers use timm_pool '' and a linear or mlp projection")
    visual = TimmModel.__new__(TimmModel)
    nn.Module.__init__(visual)
    visual.image_size = to_2tuple(vision_cfg.get("image_size", 224))
    drop_path = vision_cfg.get("timm_drop_path")
    extra = dict(timm_kwargs)
    if drop_path is not None:
        extra["drop_path_rate"] = drop_path
    visual.trunk = timm.create_model(vision_cfg["timm_model_name"], pretrained=False, **extra)
    visual.trunk.reset_classifier(0)
    prev = visual.trunk.num_features
    bias = bool(vision_cfg.get("timm_proj_bias", False))
    drop = float(vision_cfg.get("timm_drop", 0.0))
    if proj == "linear":
        visual.head = nn.Sequential()
        visual.head.add_module("drop", nn.Dropout(drop))
        visual.head.add_module("proj", nn.Linear(prev, embed_dim, bias=bias))
    else:
        visual.head = nn.Sequential()
        visual.head.add_module("mlp", Mlp(prev, 2 * embed_dim, embed_dim, drop=(drop, 0), bias=(True, bias)))
    return visual


def build_fcclip_open_clip(config: FCCLIPConfig) -> nn.Module:
    """The open_clip model FC-CLIP wraps: `open_clip.create_model(clip_model_name, pretrained)` for a named
    architecture, or an open_clip `CLIP` from `open_clip_model_cfg` (+ `timm_kwargs` for the trunk)."""
    import open_clip
    from open_clip.model import CLIP

    if config.open_clip_model_cfg is None:
        if config.timm_kwargs:
            raise ValueError("timm_kwargs need an explicit open_clip_model_cfg")
        return open_clip.create_model(config.clip_model_name, pretrained=config.clip_pretrained)
    cfg = copy.deepcopy(dict(config.open_clip_model_cfg))
    vision_cfg = cfg["vision_cfg"]
    if not vision_cfg.get("timm_model_name"):
        raise NotImplementedError("FC-CLIP backbones are timm ConvNeXt towers (vision_cfg.timm_model_name)")
    # Build the text side with a one-block placeholder trunk, then put the real tower in: the trunk kwargs that
    # open_clip cannot pass (tiny depths / dims) reach timm directly.
    placeholder = dict(vision_cfg, timm_model_name="convnext_atto")
    model = CLIP(embed_dim=cfg["embed_dim"], vision_cfg=placeholder, text_cfg=cfg["text_cfg"],
                 quick_gelu=bool(cfg.get("quick_gelu", False)))
    model.visual = _timm_tower(vision_cfg, cfg["embed_dim"], config.timm_kwargs)
    if config.clip_pretrained is not None:
        open_clip.load_checkpoint(model, config.clip_pretrained, strict=True)
    return model


class FCCLIPBackbone(nn.Module):
    """Frozen open_clip ConvNeXt CLIP: multi-scale features, the dense CLIP map, the CLIP head and the text tower.

    Args:
        config: the FC-CLIP config (CLIP architecture); `model` an already built open_clip model (tests).
    """

    def __init__(self, config: FCCLIPConfig, model: Optional[nn.Module] = None):
        super().__init__()
        from timm.models.convnext import ConvNeXt

        self.clip_model_name = config.clip_model_name
        self.clip = build_fcclip_open_clip(config) if model is None else model
        trunk = getattr(self.clip.visual, "trunk", None)
        if not isinstance(trunk, ConvNeXt):
            raise NotImplementedError(f"FC-CLIP backbone must be a timm ConvNeXt, got {type(trunk).__name__}")
        widths = tuple(int(stage.blocks[-1].mlp.fc2.out_features) for stage in trunk.stages)
        if widths != tuple(config.stage_channels):
            raise ValueError(f"{config.clip_model_name}: trunk stage widths {widths} != config.stage_channels "
                             f"{tuple(config.stage_channels)}")
        self.stage_channels = widths
        self.embed_dim = int(self.clip.text_projection.shape[-1])  # FC-CLIP `dim_latent`
        for p in self.clip.parameters():  # frozen, as FC-CLIP's `freeze_everything`
            p.requires_grad_(False)
        self._tokenizer = None
        self._fingerprint_key: Optional[tuple] = None
        self._fingerprint: Optional[str] = None

    @property
    def head_kind(self) -> str:
        """"proj" (`visual.head.proj`, convnext_base_w_320) or "mlp" (`visual.head.mlp`, convnext_large_d_320)."""
        return "mlp" if hasattr(self.clip.visual.head, "mlp") else "proj"

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's log temperature (frozen); the out-of-vocabulary logits use `min(exp(.), 100)`."""
        return self.clip.logit_scale.detach()

    def forward(self, pixel_values: Tensor) -> ClipBackboneOutput:
        """pixel_values: `[B, 3, H, W]` normalised with FC-CLIP's 0-255 mean / std, H and W multiples of 32."""
        trunk = self.clip.visual.trunk
        x = trunk.stem(pixel_values)
        stages = []
        for stage in trunk.stages:
            x = stage(x)
            stages.append(x)
        return ClipBackboneOutput(feature_maps=tuple(stages), clip_dense=trunk.norm_pre(x))

    def project_pooled(self, pooled: Tensor) -> Tensor:
        """`[B, Q, C]` pooled dense features -> `[B, Q, D]` CLIP embeddings: `trunk.head` on a 1x1 map, then
        `head` (FC-CLIP `visual_prediction_forward_convnext`)."""
        b, q, c = pooled.shape
        x = self.clip.visual.trunk.head(pooled.reshape(b * q, c, 1, 1))
        x = self.clip.visual.head(x)
        return x.view(b, q, x.shape[-1])

    # ------------------------------------------------------------------------------------------------ text tower
    def tokenize(self, texts: List[str]) -> Tensor:
        """open_clip's tokenizer for this model (FC-CLIP `open_clip.get_tokenizer(model_name)`)."""
        if self._tokenizer is None:
            import open_clip
            from open_clip.tokenizer import SimpleTokenizer

            if self.clip_model_name in open_clip.list_models():
                self._tokenizer = open_clip.get_tokenizer(self.clip_model_name)
            else:
                self._tokenizer = SimpleTokenizer(context_length=self.clip.context_length)
        return self._tokenizer(list(texts))

    def encode_text(self, token_ids: Tensor) -> Tensor:
        """`[N, L]` token ids -> `[N, D]` text features, not normalised (FC-CLIP `encode_text(normalize=False)`)."""
        return self.clip.encode_text(token_ids, normalize=False)

    def text_fingerprint(self) -> str:
        """sha256 over the text tower's tensors and the model name: the `TextEmbeddingCache` key of this tower.

        Memoised on each tensor's storage pointer and version counter (a load or `.to()` recomputes it)."""
        skip = {"logit_scale", "logit_bias"}
        state = [(n, t) for n, t in self.clip.state_dict().items() if not n.startswith("visual.") and n not in skip]
        key = tuple((n, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for n, t in state)
        if key != self._fingerprint_key or self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"fcclip:{self.clip_model_name}".encode())
            for name, t in state:
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
            self._fingerprint_key = key
        return self._fingerprint
