"""What the Segmenter needs around an FC-CLIP generator: its vocabulary side and its two classifiers.

FC-CLIP's class logits are over the test vocabulary, from text embeddings of *its own* CLIP text tower (FC-CLIP
`get_text_classifier`, MaskCLIP++ `test_t_embs_f`: the 14 VILD templates = `t14`, averaged). They go through a
`TextEmbeddingCache` keyed by that tower's fingerprint, beside the classifier's cache, so a vocabulary change encodes
the unseen phrases once for each tower.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs_ros.text_cache import TextEmbeddingCache
from ovs_ros.vocabulary import Vocabulary, seen_classes

from .classification import synonym_text_classifier
from .ensemble import fcclip_ensemble_probs

FCCLIP_TEMPLATE_SET = "t14"  # FC-CLIP's VILD_PROMPT (fcclip/fcclip.py:26-41), the same 14 strings in the same order


def fcclip_mask_probs(mask_logits: Tensor, padded_hw, valid_hw, output_hw) -> Tensor:
    """FC-CLIP's own mask chain (`fcclip.py:404-423`, detectron2 `sem_seg_postprocess`): the stride-4 *logits* are
    resized bilinearly to the padded input, cropped to the valid size, resized to the output size, and only then
    passed through the sigmoid (MaskCLIP++, and the Segmenter's default chain, take the sigmoid first; on the
    reference fixture the two orders give different panoptic maps at ~0.2 % of the pixels).

    An output larger than the generator frame keeps the frame (the Segmenter then resizes the id map, as for every
    generator: Q full-resolution masks would not fit). Returns `[B, Q, H, W]` float32 probabilities.
    """
    x = F.interpolate(mask_logits.float(), size=tuple(padded_hw), mode="bilinear", align_corners=False)
    h, w = int(valid_hw[0]), int(valid_hw[1])
    x = x[:, :, :h, :w]
    out_h, out_w = int(output_hw[0]), int(output_hw[1])
    if (out_h, out_w) != (h, w) and out_h * out_w <= h * w:
        x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return x.sigmoid()


@dataclass(frozen=True)
class FCCLIPVocabulary:
    """One vocabulary as FC-CLIP sees it. text_classifier: `[S + 1, D]` unit rows (synonyms in class order, void
    last); synonym_class_index: `[S]`; seen: `[K]` bool (a name shared with FC-CLIP's training classes)."""

    text_classifier: Tensor
    synonym_class_index: Tensor
    num_classes: int
    seen: Tensor


class FCCLIPRuntime:
    """Text side and logits of an FC-CLIP generator (eager, or an engine standing in for it)."""

    def __init__(self, generator, *, cache_dir: Optional[Path], device: torch.device) -> None:
        self.generator = generator
        self.device = device
        backbone = generator.backbone
        self.text_cache = TextEmbeddingCache(self._encode, backbone.text_fingerprint(), cache_dir=cache_dir,
                                             device=device)

    @torch.inference_mode()
    def _encode(self, sentences: List[str]) -> Tensor:
        backbone = self.generator.backbone
        return backbone.encode_text(backbone.tokenize(sentences).to(self.device)).float()

    def prepare(self, vocabulary: Vocabulary) -> FCCLIPVocabulary:
        """Encode (or fetch) the vocabulary with FC-CLIP's templates; one text classifier per vocabulary."""
        emb = self.text_cache.embed(vocabulary, FCCLIP_TEMPLATE_SET)
        with torch.inference_mode():
            classifier = self.generator.text_classifier(synonym_text_classifier(emb.text_embeddings).float())
        seen = seen_classes(vocabulary, self.generator.config.class_synonyms)
        return FCCLIPVocabulary(text_classifier=classifier, synonym_class_index=emb.synonym_class_index,
                                num_classes=emb.num_classes, seen=torch.as_tensor(seen, device=self.device))

    def in_vocabulary_logits(self, generated, vocab: FCCLIPVocabulary) -> Tensor:
        """`[Q, K + 1]` decoder logits of image 0, void last."""
        return self.generator.in_vocabulary_logits(generated.class_embeddings.float(), vocab.text_classifier,
                                                   vocab.synonym_class_index, vocab.num_classes)[0]

    def out_of_vocabulary_logits(self, generated, vocab: FCCLIPVocabulary) -> Tensor:
        """`[Q, K + 1]` frozen-CLIP logits of image 0, void last."""
        return self.generator.out_of_vocabulary_logits(generated.clip_mask_embeddings.float(), vocab.text_classifier,
                                                       vocab.synonym_class_index, vocab.num_classes)[0]

    @staticmethod
    def ensemble(in_logits: Tensor, out_logits: Tensor, vocab: FCCLIPVocabulary, alpha: float, beta: float) -> Tensor:
        """FC-CLIP's own geometric ensemble -> `[Q, K + 1]` class probabilities, void last."""
        return fcclip_ensemble_probs(in_logits, out_logits, vocab.seen, alpha, beta)
