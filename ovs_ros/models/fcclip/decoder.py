"""FC-CLIP's masked-attention decoder (`fcclip/modeling/transformer_decoder/fcclip_transformer_decoder.py`).

Identical to Mask2Former's (the layers, masks and attention biases are the project's `MaskedAttentionDecoder`)
except the class head, which is open-vocabulary: the stride-4 mask features are mask-pooled under each query's
binarised mask, projected (`_mask_pooling_proj`: LayerNorm + Linear), added to the normed query, and mapped by a
3-layer MLP (`class_embed`) into CLIP's embedding space. The logits (cosine with the test vocabulary's text
embeddings x `min(exp(logit_scale), 100)`, max over synonyms, void last) are taken outside, by
`classification.classification_logits`, so the decoder (and its exported engine) does not depend on the vocabulary.
Intermediate class predictions only feed FC-CLIP's auxiliary losses: only the last layer's is computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ovs_ros.models.mask2former.pixel_decoder import sine_position_embedding
from ovs_ros.models.mask2former.transformer_decoder import MLP, MaskedAttentionDecoder, masked_attention_bias

from .classification import mask_pool
from .config import ConvNeXtHeadConfig


@dataclass
class FCCLIPDecoderOutput:
    """mask_logits: `[B, Q, H/4, W/4]`. class_embeddings: `[B, Q, D]` in CLIP space, not normalised."""

    mask_logits: Tensor
    class_embeddings: Tensor


class FCCLIPTransformerDecoder(MaskedAttentionDecoder):
    """Mask2Former's masked-attention decoder with FC-CLIP's open-vocabulary class head.

    Args:
        config: head sizes; clip_embedding_dim: CLIP's joint embedding size (`MODEL.FC_CLIP.EMBED_DIM`).
    """

    def __init__(self, config: ConvNeXtHeadConfig, clip_embedding_dim: int):
        super().__init__(config)
        dim = config.hidden_dim
        del self.class_embed  # Mask2Former's closed-vocabulary Linear; FC-CLIP has no such head
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.class_embed = MLP(dim, dim, clip_embedding_dim, 3)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # FC-CLIP's init; learned

    def class_embeddings(self, decoded: Tensor, mask_logits: Tensor, mask_features: Tensor) -> Tensor:
        """decoded `[B, Q, D]` normed queries -> `[B, Q, D_clip]` (FC-CLIP `forward_prediction_heads`)."""
        pooled = self._mask_pooling_proj(mask_pool(mask_features, mask_logits))
        return self.class_embed(pooled + decoded)

    def forward(self, multi_scale_features: tuple[Tensor, ...], mask_features: Tensor) -> FCCLIPDecoderOutput:
        # The loop of MaskedAttentionDecoder.forward, ending in FC-CLIP's class head instead of a Linear.
        b = mask_features.shape[0]
        srcs, pos, sizes = [], [], []
        for level in range(self.num_feature_levels):
            x = multi_scale_features[level]
            h, w = x.shape[-2:]
            sizes.append((h, w))
            pe = sine_position_embedding(b, h, w, self.num_pos_feats, device=x.device, dtype=x.dtype)
            pos.append(pe.flatten(2).transpose(1, 2))
            src = self.input_proj[level](x).flatten(2) + self.level_embed.weight[level][None, :, None]
            srcs.append(src.transpose(1, 2))
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        output = self.query_feat.weight[None].expand(b, -1, -1)
        decoded, masks = self.predict_masks(output, mask_features)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            bias = masked_attention_bias(masks, sizes[level])
            output = self.transformer_cross_attention_layers[i](output, srcs[level], bias, pos[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            decoded, masks = self.predict_masks(output, mask_features)
        return FCCLIPDecoderOutput(mask_logits=masks, class_embeddings=self.class_embeddings(decoded, masks,
                                                                                          mask_features))
