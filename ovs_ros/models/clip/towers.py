"""CLIP towers from open_clip and the mask classifier built on them.

open_clip builds every supported CLIP (reuse before rewriting, style.md 2): EVA02 and ConvNeXt through its
`TimmModel` wrapper around a timm trunk, OpenAI-style ViTs through its own `VisionTransformer`. `ClipClassifier`
keeps the whole open_clip model (text tower included) and adds the MaskCLIP++ mask embeddings:
mask tokens for ViTs (`mask_tokens.py`), mask pooling for ConvNeXt (`mask_pooling.py`).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .config import ClipClassifierConfig
from .mask_pooling import convnext_project, mask_average_pool
from .mask_tokens import run_vit_with_mask_tokens, vit_output_head
from .teva import Teva, run_vit_with_teva, visual_width

FAMILIES = ("eva", "vit", "convnext")


@dataclass
class MaskEmbeddingOutput:
    """Output of `ClipClassifier.encode_masks`.

    Attributes:
        mask_embeddings: `[B, Q, D]` one CLIP embedding per mask, not L2-normalised.
        image_embeddings: `[B, D]` the image embedding (equals `encode_image`), not normalised.
        patch_embeddings: `[B, h*w, D]` ConvNeXt only: each stride-32 feature through `trunk.head` and `head`
            (the K/V of `PseudoTextPSM`); None for ViT families.
        image_tokens: ViT families: the final `[B, 1 + HW, C]` image tokens before the output norm (FOV-Seg's
            FiSeR reads them in training); None for ConvNeXt and for engine backends.
    """

    mask_embeddings: Tensor
    image_embeddings: Tensor
    patch_embeddings: Optional[Tensor] = None
    image_tokens: Optional[Tensor] = None


def build_open_clip_model(config: ClipClassifierConfig) -> nn.Module:
    """open_clip model for a config: the built-in architecture `model_name`, or `open_clip_model_cfg` if given."""
    import open_clip

    if config.open_clip_model_cfg is None:
        try:
            return open_clip.create_model(config.model_name, pretrained=config.pretrained,
                                          force_quick_gelu=config.quick_gelu)
        except RuntimeError as exc:
            if config.pretrained is None or "download" not in str(exc).lower():
                raise
            from ovs_ros.models.cards import WeightsNotFoundError

            raise WeightsNotFoundError(
                f"base CLIP weights {config.model_name}:{config.pretrained} are not in the local cache and could not "
                f"be downloaded ({exc}). On a machine with internet run once: python -c \"import open_clip; "
                f"open_clip.create_model('{config.model_name}', pretrained='{config.pretrained}')\" "
                "(fills the Hugging Face cache, ~/.cache/huggingface), or set `pretrained` to a local checkpoint file."
            ) from exc
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(dict(config.open_clip_model_cfg))
    custom_text = bool(cfg.pop("custom_text", False))
    cfg["quick_gelu"] = bool(cfg.get("quick_gelu", False) or config.quick_gelu)
    model = (CustomTextCLIP if custom_text else CLIP)(**cfg)
    if config.pretrained is not None:
        open_clip.load_checkpoint(model, config.pretrained, strict=True)
    return model


def detect_family(visual: nn.Module) -> str:
    """"eva" (timm `Eva` trunk), "vit" (open_clip `VisionTransformer`) or "convnext" (timm `ConvNeXt` trunk)."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        from timm.models.convnext import ConvNeXt
        from timm.models.eva import Eva, EvaAttention, EvaBlock

        if isinstance(trunk, Eva):
            if not all(isinstance(b, EvaBlock) and isinstance(b.attn, EvaAttention) for b in trunk.blocks):
                raise NotImplementedError("EVA trunk with non-EVA attention blocks (e.g. attn_type='rope')")
            if trunk.global_pool != "token" or trunk.attn_pool is not None or trunk.reg_token is not None:
                raise NotImplementedError("EVA trunk must use CLS-token pooling without register tokens")
            if getattr(trunk, "rope_mixed", False):
                raise NotImplementedError("mixed-mode RoPE is not supported")
            if len(visual.head) != 0:
                raise NotImplementedError("EVA towers with an extra open_clip projection head are not supported")
            return "eva"
        if isinstance(trunk, ConvNeXt):
            if "pool" in dict(visual.head.named_children()):
                raise NotImplementedError("ConvNeXt towers with attention pooling are not supported")
            return "convnext"
        raise NotImplementedError(f"unsupported timm trunk {type(trunk).__name__}")
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise NotImplementedError("OpenAI-style ViT must pool the CLS token ('tok') without attentional pooling")
        blocks = visual.transformer.resblocks
        if not all(isinstance(b, ResidualAttentionBlock) and not hasattr(b, "ln_1_kv") for b in blocks):
            raise NotImplementedError("OpenAI-style ViT with custom attention blocks is not supported")
        if not visual.transformer.batch_first:
            raise NotImplementedError("OpenAI-style ViT must be batch_first")
        return "vit"
    raise NotImplementedError(f"unsupported open_clip visual tower {type(visual).__name__}")


def _batched_text(text_embeddings: Optional[Tensor], batch: int) -> Tensor:
    if text_embeddings is None:
        raise ValueError("this classifier has TeVA: its mask embeddings depend on the vocabulary, so encode_masks "
                         "needs the target text embeddings (text_embeddings [K, D] or [B, K, D])")
    if text_embeddings.dim() == 2:
        return text_embeddings.unsqueeze(0).expand(batch, -1, -1)
    if text_embeddings.dim() != 3 or text_embeddings.shape[0] != batch:
        raise ValueError(f"text_embeddings must be [K, D] or [{batch}, K, D], got {tuple(text_embeddings.shape)}")
    return text_embeddings


def _last_linear_out(module: nn.Module) -> Optional[int]:
    out = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            out = m.out_features
    return out


class ClipClassifier(nn.Module):
    """A CLIP that embeds masks: MaskCLIP++ mask tokens (ViT, EVA) or mask pooling (ConvNeXt).

    Attributes:
        model: the open_clip model (vision and text towers, `logit_scale`).
        family: "eva" | "vit" | "convnext".
        embed_dim: CLIP joint embedding size D.
        size_divisibility: input H and W must be multiples of this (patch size for ViT, 32 for ConvNeXt).
        pixel_mean_01, pixel_std_01: CLIP normalisation on the 0-1 scale, from open_clip's preprocess config.
        mask_logit_scale: ViT families: `[mask_prior_blocks, heads]` log scale of the mask bias; index 0 belongs to
            the last block (corrections.md 5). None for ConvNeXt. Unused with TeVA (its mask rule is binary).
        teva: FISA / FOV-Seg TeVA (`teva.py`) when `config.teva.enabled`, else None. With it the mask embeddings
            depend on the vocabulary: `encode_masks` needs the target text embeddings.
    """

    def __init__(self, config: ClipClassifierConfig, model: Optional[nn.Module] = None):
        super().__init__()
        self.config = config
        self.model = build_open_clip_model(config) if model is None else model
        visual = self.model.visual
        self.family = detect_family(visual)

        import open_clip
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        preprocess = open_clip.get_model_preprocess_cfg(self.model)
        self.pixel_mean_01: Tuple[float, float, float] = tuple(
            float(v) for v in (preprocess.get("mean") or OPENAI_DATASET_MEAN))
        self.pixel_std_01: Tuple[float, float, float] = tuple(
            float(v) for v in (preprocess.get("std") or OPENAI_DATASET_STD))

        self.mask_prior_blocks = config.mask_prior_blocks
        if self.family == "eva":
            trunk = visual.trunk
            self.size_divisibility = int(trunk.patch_embed.patch_size[0])
            num_heads = trunk.blocks[0].attn.num_heads
            num_blocks = len(trunk.blocks)
            self.embed_dim = int(_last_linear_out(trunk.head) or trunk.embed_dim)
        elif self.family == "vit":
            self.size_divisibility = int(visual.conv1.kernel_size[0])
            num_heads = visual.transformer.resblocks[0].attn.num_heads
            num_blocks = len(visual.transformer.resblocks)
            self.embed_dim = (int(visual.proj.shape[1]) if visual.proj is not None
                              else int(visual.ln_post.weight.numel()))
        else:
            self.size_divisibility = int(visual.trunk.feature_info[-1]["reduction"])
            self.embed_dim = int(_last_linear_out(visual.head) or visual.trunk.num_features)
            num_heads = num_blocks = 0
        if self.family in ("eva", "vit"):
            if config.mask_prior_blocks > num_blocks:
                raise ValueError(f"mask_prior_blocks={config.mask_prior_blocks} exceeds the {num_blocks} blocks")
            self.mask_logit_scale = nn.Parameter(
                torch.full((config.mask_prior_blocks, num_heads), float(config.mask_logit_scale_init)))
        else:
            self.mask_logit_scale = None
        self.teva: Optional[Teva] = None
        if config.teva.enabled:
            if self.family == "convnext":
                raise ValueError("TeVA needs a ViT CLIP (mask tokens); ConvNeXt pools its masks")
            self.teva = Teva(config.teva, visual_width(self.family, visual), self.embed_dim, config.mask_prior_blocks)
        # CLIP's logit scale is never trained (corrections.md 8).
        self.model.logit_scale.requires_grad_(False)
        self._tokenizer = None
        self._fingerprint_key: Optional[tuple] = None
        self._fingerprint: Optional[str] = None

    @classmethod
    def from_open_clip(cls, model: nn.Module, config: ClipClassifierConfig) -> "ClipClassifier":
        """Wrap an already built open_clip model (tests with custom tiny towers, externally loaded weights)."""
        return cls(config, model=model)

    # ------------------------------------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> Tensor:
        """CLIP's (frozen) log temperature, a scalar tensor."""
        return self.model.logit_scale.detach()

    def _check_pixels(self, pixel_values: Tensor) -> None:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be [B, 3, H, W], got {tuple(pixel_values.shape)}")
        h, w = pixel_values.shape[-2:]
        if h % self.size_divisibility or w % self.size_divisibility:
            raise ValueError(f"pixel_values H, W = {h}, {w} must be multiples of {self.size_divisibility}")

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """`[B, 3, H, W]` CLIP-normalised -> `[B, D]`, not normalised; equals open_clip's `encode_image` at the
        tower's own size and, unlike it, also runs ViTs at other sizes (position embedding / RoPE resized)."""
        self._check_pixels(pixel_values)
        visual = self.model.visual
        if self.family == "convnext":
            return self.model.encode_image(pixel_values)
        x, _ = run_vit_with_mask_tokens(self.family, visual, pixel_values, None, None, self.mask_prior_blocks)
        return vit_output_head(self.family, visual)(x[:, 0])

    @property
    def vocabulary_dependent(self) -> bool:
        """True when mask embeddings depend on the vocabulary (TeVA): a vocabulary change must re-run CLIP."""
        return self.teva is not None

    def encode_masks(self, pixel_values: Tensor, mask_probs: Tensor, text_embeddings: Optional[Tensor] = None,
                     text_padding_mask: Optional[Tensor] = None) -> MaskEmbeddingOutput:
        """Embed Q soft masks per image.

        Args:
            pixel_values: `[B, 3, H, W]` CLIP-normalised, H and W multiples of `size_divisibility`.
            mask_probs: `[B, Q, H', W']` soft masks in [0, 1] in the CLIP input frame (padding = 0); resampled to
                the patch / feature grid inside (bilinear, align_corners=False).
            text_embeddings: TeVA only (required there, ignored otherwise: the mask embeddings of a classifier
                without TeVA do not depend on text): `[K, D]` or `[B, K, D]` L2-normalised target text embeddings.
            text_padding_mask: TeVA: `[B, K]` True where a target is padding.
        """
        self._check_pixels(pixel_values)
        if mask_probs.dim() != 4 or mask_probs.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"mask_probs must be [B, Q, H, W] with B = {pixel_values.shape[0]}, "
                             f"got {tuple(mask_probs.shape)}")
        visual = self.model.visual
        if self.family == "convnext":
            features = visual.trunk.forward_features(pixel_values)  # B, C, h, w
            pooled = mask_average_pool(features, mask_probs)
            image = visual.head(visual.trunk.forward_head(features))
            patches = features.flatten(2).transpose(1, 2)  # B, hw, C
            return MaskEmbeddingOutput(
                mask_embeddings=convnext_project(visual, pooled),
                image_embeddings=image,
                patch_embeddings=convnext_project(visual, patches),
            )
        if self.teva is not None:
            text = _batched_text(text_embeddings, pixel_values.shape[0])
            x, mask_tokens = run_vit_with_teva(self.family, visual, pixel_values, mask_probs, self.teva, text,
                                               text_padding_mask, self.mask_prior_blocks)
        else:
            x, mask_tokens = run_vit_with_mask_tokens(self.family, visual, pixel_values, mask_probs,
                                                      self.mask_logit_scale, self.mask_prior_blocks)
        head = vit_output_head(self.family, visual)
        return MaskEmbeddingOutput(mask_embeddings=head(mask_tokens), image_embeddings=head(x[:, 0]), image_tokens=x)

    # ------------------------------------------------------------------------------------------------------------
    def tokenize(self, texts: List[str]) -> Tensor:
        """open_clip tokenizer of this model (BPE vocabulary shipped with open_clip) -> `[N, context_length]`."""
        if self._tokenizer is None:
            import open_clip
            from open_clip.tokenizer import SimpleTokenizer

            if self.config.open_clip_model_cfg is None and self.config.model_name in open_clip.list_models():
                self._tokenizer = open_clip.get_tokenizer(self.config.model_name)
            else:
                self._tokenizer = SimpleTokenizer(context_length=self.model.context_length)
        return self._tokenizer(list(texts))

    def encode_text(self, token_ids: Tensor) -> Tensor:
        """`[N, L]` token ids -> `[N, D]` text embeddings, not normalised (open_clip `encode_text`)."""
        return self.model.encode_text(token_ids, normalize=False)

    def _text_state(self) -> List[Tuple[str, Tensor]]:
        skip = {"logit_scale", "logit_bias"}
        return [(n, t) for n, t in self.model.state_dict().items() if not n.startswith("visual.") and n not in skip]

    def text_fingerprint(self) -> str:
        """sha256 over the text tower's tensors (names, dtypes, shapes, bytes) and `model_name`.

        Memoised on each tensor's storage pointer and autograd version counter, so an in-place edit, a
        `load_state_dict` or a `.to()` recomputes it. (Edits through `.data` bypass the version counter.)
        """
        state = self._text_state()
        key = tuple((n, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for n, t in state)
        if key != self._fingerprint_key or self._fingerprint is None:
            h = hashlib.sha256()
            h.update(self.config.model_name.encode())
            for name, t in state:
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
            self._fingerprint_key = key
        return self._fingerprint
