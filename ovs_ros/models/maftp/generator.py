"""MAFT+ as a mask generator: FC-CLIP's generator (`FCCLIPGenerator`) plus the CDT and the dense CLIP embeddings it
attends to (`maft/maft_plus.py` `MAFT_Plus.forward`, inference branch).

The forward pass stays vocabulary-free (one engine): it also returns `clip_dense_embeddings`, CLIP-V's stride-32
map through the CLIP head as MAFT+ computes it (`cdt.dense_clip_embeddings`). The CDT and every logit need the
vocabulary and run afterwards (`transferred_text_classifier`, `out_of_vocabulary_logits`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ovs_ros.models.fcclip.classification import classification_logits
from ovs_ros.models.fcclip.generator import FCCLIPGenerator, FCCLIPOutput
from ovs_ros.models.fcclip.out_of_vocabulary import out_of_vocabulary_embeddings

from .cdt import ContentDependentTransfer, dense_clip_embeddings
from .config import MAFTPlusConfig


@dataclass
class MAFTPlusOutput(FCCLIPOutput):
    """FC-CLIP's outputs plus clip_dense_embeddings: `[B, D, H/32, W/32]`, the CDT's keys and values."""

    clip_dense_embeddings: Tensor


class MAFTPlusGenerator(FCCLIPGenerator):
    """FC-CLIP generator + `cdt` (MAFT+ `ContentDependentTransfer`). The decoder's class embeddings give the void
    probability (and the generator logits of a MaskCLIP++ pairing, which does not use the CDT); MAFT+'s own
    classification is the out-of-vocabulary branch against the transferred text classifier."""

    output_type = MAFTPlusOutput

    @property
    def runtime_class(self) -> type:
        """The Segmenter's vocabulary side for this generator (`runtime.MAFTPlusRuntime`)."""
        from .runtime import MAFTPlusRuntime

        return MAFTPlusRuntime

    def __init__(self, config: MAFTPlusConfig, clip_model: Optional[nn.Module] = None):
        super().__init__(config, clip_model)
        if config.cdt_dim != self.backbone.embed_dim:
            raise ValueError(f"cdt_dim {config.cdt_dim} must equal the CLIP embedding size {self.backbone.embed_dim}")
        self.cdt = ContentDependentTransfer(config.cdt_dim, config.cdt_heads, panoptic=config.cdt_panoptic)

    def forward(self, pixel_values: Tensor) -> MAFTPlusOutput:
        """pixel_values: normalised `[B, 3, H, W]`, H and W multiples of 32."""
        features, pixels = self.forward_features(pixel_values)
        out = self.transformer_decoder(pixels.multi_scale_features, pixels.mask_features)
        clip_embeddings = out_of_vocabulary_embeddings(self.backbone, features.clip_dense, out.mask_logits)
        return MAFTPlusOutput(mask_logits=out.mask_logits, class_embeddings=out.class_embeddings,
                              clip_mask_embeddings=clip_embeddings,
                              clip_dense_embeddings=dense_clip_embeddings(self.backbone, features.clip_dense))

    # ------------------------------------------------------------------------------------------ vocabulary side
    def transferred_text_classifier(self, clip_dense_embeddings: Tensor, text_classifier_with_void: Tensor) -> Tensor:
        """`[S + 1, D]` cached rows -> `[B, S + 1, D]` image-dependent rows (void included), not re-normalised."""
        return self.cdt(clip_dense_embeddings, text_classifier_with_void)

    def out_of_vocabulary_logits(self, clip_mask_embeddings: Tensor, text_classifier_with_void: Tensor,
                                 synonym_class_index: Tensor, num_classes: int) -> Tensor:
        """`[B, Q, K + 1]` CLIP logits (CLIP's logit scale, max over synonyms, void last) against a per-image
        classifier `[B, S + 1, D]` (MAFT+'s batched `get_classification_logits`), or a shared `[S + 1, D]` one."""
        if text_classifier_with_void.dim() == 2:
            return super().out_of_vocabulary_logits(clip_mask_embeddings, text_classifier_with_void,
                                                    synonym_class_index, num_classes)
        if text_classifier_with_void.shape[0] != clip_mask_embeddings.shape[0]:
            raise ValueError(f"{text_classifier_with_void.shape[0]} text classifiers for "
                             f"{clip_mask_embeddings.shape[0]} images")
        return torch.cat([classification_logits(clip_mask_embeddings[i:i + 1], text_classifier_with_void[i],
                                                self.backbone.logit_scale, synonym_class_index, num_classes)
                          for i in range(clip_mask_embeddings.shape[0])], dim=0)
