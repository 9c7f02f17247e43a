"""FC-CLIP as a mask generator: one frozen-CLIP pass -> Q mask logits, Q in-vocabulary class embeddings and Q
out-of-vocabulary CLIP mask embeddings (`fcclip/fcclip.py` `FCCLIP.forward`, inference branch).

The forward pass is vocabulary-free (an engine exports it once): class logits over the current vocabulary are taken
afterwards from the embeddings (`in_vocabulary_logits`, `out_of_vocabulary_logits`) against text embeddings of the
same CLIP's text tower.

Preprocessing (done by the caller): RGB on the 0-1 scale normalised with `pixel_mean_01` / `pixel_std_01` (FC-CLIP's
0-255 `PIXEL_MEAN` / `PIXEL_STD`, OpenAI CLIP's statistics, divided by 255), zero-padded to a multiple of 32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from ovs_ros.models.mask2former.pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderOutput

from .backbone import ClipBackboneOutput, FCCLIPBackbone
from .classification import classification_logits, with_void
from .config import PIXEL_MEAN_255, PIXEL_STD_255, FCCLIPConfig
from .decoder import FCCLIPTransformerDecoder
from .out_of_vocabulary import out_of_vocabulary_embeddings


@dataclass
class FCCLIPOutput:
    """mask_logits: `[B, Q, H/4, W/4]` at stride 4 of the padded input.
    class_embeddings: `[B, Q, D]` in-vocabulary query embeddings (decoder class head), not normalised.
    clip_mask_embeddings: `[B, Q, D]` out-of-vocabulary CLIP embeddings of the masks, not normalised.
    """

    mask_logits: Tensor
    class_embeddings: Tensor
    clip_mask_embeddings: Tensor


class FCCLIPGenerator(nn.Module):
    """Frozen open_clip ConvNeXt -> MSDeformAttn pixel decoder -> FC-CLIP masked-attention decoder, plus the
    out-of-vocabulary pooling on the same backbone pass.

    Submodules: `backbone` (FCCLIPBackbone), `pixel_decoder`, `transformer_decoder`, `void_embedding` (the learned
    void text row, FC-CLIP `void_embedding`).
    """

    open_vocabulary = True  # class logits come over the test vocabulary (no train -> test look-up table)
    output_type = FCCLIPOutput  # what forward returns (engines export its fields in order)
    pixel_mean_01 = tuple(v / 255.0 for v in PIXEL_MEAN_255)
    pixel_std_01 = tuple(v / 255.0 for v in PIXEL_STD_255)

    def __init__(self, config: FCCLIPConfig, clip_model: Optional[nn.Module] = None):
        super().__init__()
        self.config = config
        head_config = config.mask2former_config()
        self.backbone = FCCLIPBackbone(config, clip_model)
        self.pixel_decoder = MSDeformAttnPixelDecoder(head_config)
        self.transformer_decoder = FCCLIPTransformerDecoder(head_config, self.backbone.embed_dim)
        self.void_embedding = nn.Embedding(1, self.backbone.embed_dim)

    @property
    def class_names(self) -> list[str]:
        """Training vocabulary (for seen / unseen only: the logits are over the test vocabulary)."""
        return self.config.class_names

    @property
    def size_divisibility(self) -> int:
        return self.config.size_divisibility

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def forward_features(self, pixel_values: Tensor) -> tuple[ClipBackboneOutput, PixelDecoderOutput]:
        features = self.backbone(pixel_values)
        return features, self.pixel_decoder(features.feature_maps)

    def forward(self, pixel_values: Tensor) -> FCCLIPOutput:
        """pixel_values: normalised `[B, 3, H, W]`, H and W multiples of 32."""
        features, pixels = self.forward_features(pixel_values)
        out = self.transformer_decoder(pixels.multi_scale_features, pixels.mask_features)
        clip_embeddings = out_of_vocabulary_embeddings(self.backbone, features.clip_dense, out.mask_logits)
        return FCCLIPOutput(mask_logits=out.mask_logits, class_embeddings=out.class_embeddings,
                            clip_mask_embeddings=clip_embeddings)

    # ------------------------------------------------------------------------------------------ vocabulary side
    def text_classifier(self, synonym_classifier: Tensor) -> Tensor:
        """`[S, D]` unit synonym rows (`classification.synonym_text_classifier`) -> `[S + 1, D]` with void last."""
        return with_void(synonym_classifier, self.void_embedding.weight)

    def in_vocabulary_logits(self, class_embeddings: Tensor, text_classifier_with_void: Tensor,
                             synonym_class_index: Tensor, num_classes: int) -> Tensor:
        """`[B, Q, K + 1]` decoder logits over the test vocabulary, void last (FC-CLIP `pred_logits`)."""
        return classification_logits(class_embeddings, text_classifier_with_void,
                                     self.transformer_decoder.logit_scale.detach(), synonym_class_index, num_classes)

    def out_of_vocabulary_logits(self, clip_mask_embeddings: Tensor, text_classifier_with_void: Tensor,
                                 synonym_class_index: Tensor, num_classes: int) -> Tensor:
        """`[B, Q, K + 1]` frozen-CLIP logits (CLIP's logit scale), void last (FC-CLIP `out_vocab_cls_results`)."""
        return classification_logits(clip_mask_embeddings, text_classifier_with_void, self.backbone.logit_scale,
                                     synonym_class_index, num_classes)
