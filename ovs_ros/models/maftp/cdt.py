"""MAFT+'s Content-Dependent Transfer (jiaosiyu1999/MAFT-Plus @fd12806,
`maft/modeling/maft/content_dependent_transfer.py`, called from `maft/maft_plus.py:352-354`).

The text classifier (one unit row per synonym, the normalised void embedding last) attends to the image: one
`nn.MultiheadAttention(D, 8 heads, dropout 0)` with the rows as queries, `F + P` as keys and `F` as values, where
`F` are CLIP-V's dense stride-32 features through the CLIP head and `P` a normalised sine position encoding
(`PositionEmbeddingSine(D / 2, normalize=True)`). Then a Linear (`MLP`) and a LayerNorm:

- panoptic model (`MASK_FORMER.TEST.PANOPTIC_ON`, maftp_l_pano): `t' = t + LN(W A + b)`, W and b zero-initialised;
- semantic models (maftp_b, maftp_l): `t' = LN(t + W A + b)`.

`t'` is per image (`[B, S + 1, D]`) and not re-normalised; only the mask embeddings are normalised in the cosine.
It depends on the vocabulary, so it runs after the generator engine, on the cached text classifier.

Submodule names are MAFT+'s (`cross_atten.multihead_attn`, `.norm`, `.MLP`), so the released `cdt.*` keys map one to
one. `pe_layer` has no tensors.
"""
from __future__ import annotations

from torch import Tensor, nn

from ovs_ros.models.mask2former.pixel_decoder import sine_position_embedding


class ShortcutCrossAttention(nn.Module):
    """MAFT+ `ShortCut_CrossAttention`: text rows (queries) over image pixels (keys / values), then the residual."""

    def __init__(self, d_model: int, nhead: int, panoptic: bool):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():  # MAFT+ `_reset_parameters` runs before MLP exists
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.MLP = nn.Linear(d_model, d_model)  # noqa: N815 - the released checkpoint's name
        self.panoptic = panoptic
        if panoptic:  # the residual starts as the identity
            nn.init.zeros_(self.MLP.weight)
            nn.init.zeros_(self.MLP.bias)

    def forward(self, text: Tensor, memory: Tensor, pos: Tensor) -> Tensor:
        """text `[S, B, D]`, memory and pos `[HW, B, D]` (sequence first, as MAFT+) -> `[S, B, D]`."""
        attended = self.multihead_attn(query=text, key=memory + pos, value=memory, need_weights=False)[0]
        if self.panoptic:
            return text + self.norm(self.MLP(attended))
        return self.norm(text + self.MLP(attended))


class ContentDependentTransfer(nn.Module):
    """`(text classifier [S + 1, D], dense CLIP embeddings [B, D, h, w]) -> [B, S + 1, D]` image-dependent rows.

    Kept in fp32 under fp16 / bf16 (`runs_in_fp32`, model_factory.keep_fp32_islands): it runs per frame on the
    fp32 text cache, and its inputs are cast to its own dtype."""

    runs_in_fp32 = True

    def __init__(self, d_model: int, nhead: int = 8, panoptic: bool = True):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"CDT d_model must be even (the sine encoding has D / 2 features per axis), got {d_model}")
        if d_model % nhead:
            raise ValueError(f"CDT d_model {d_model} is not divisible by nhead {nhead}")
        self.d_model = d_model
        self.cross_atten = ShortcutCrossAttention(d_model, nhead, panoptic)

    @property
    def panoptic(self) -> bool:
        return self.cross_atten.panoptic

    def forward(self, dense_embeddings: Tensor, text_classifier: Tensor) -> Tensor:
        b, d, h, w = dense_embeddings.shape
        if d != self.d_model or text_classifier.shape[-1] != self.d_model:
            raise ValueError(f"CDT is {self.d_model}-d, got image features {d}-d and text rows "
                             f"{text_classifier.shape[-1]}-d")
        if text_classifier.dim() != 2:
            raise ValueError(f"text_classifier must be [S + 1, D], got {tuple(text_classifier.shape)}")
        dtype = self.cross_atten.norm.weight.dtype
        pos = sine_position_embedding(b, h, w, d // 2, device=dense_embeddings.device, dtype=dtype)
        pos = pos.flatten(2).permute(2, 0, 1)  # HW, B, D
        memory = dense_embeddings.to(dtype).flatten(2).permute(2, 0, 1)
        text = text_classifier.to(dtype).unsqueeze(1).expand(-1, b, -1)
        return self.cross_atten(text, memory, pos).permute(1, 0, 2)


def dense_clip_embeddings(backbone, clip_dense: Tensor) -> Tensor:
    """MAFT+ `visual_prediction_forward_convnext` (`maft_plus.py:563-568`): `[B, C, h, w]` -> `[B, D, h, w]`.

    Exactly as MAFT+ does it, which is *not* a per-pixel projection: the NCHW map is reshaped (not permuted) to
    `[B*h*w, C]`, so each row takes C consecutive values of the channel-major buffer (channels and positions mixed),
    goes through `trunk.head` + `head`, and the `[B*h*w, D]` result is read back as `[B, h, w, D]`. The released CDT
    weights were trained on these features; a per-pixel `permute` would give other numbers."""
    b, c, h, w = clip_dense.shape
    x = clip_dense.contiguous().reshape(b * h * w, c)[..., None, None]
    x = backbone.clip.visual.head(backbone.clip.visual.trunk.head(x))
    return x.reshape(b, h, w, x.shape[-1]).permute(0, 3, 1, 2)

