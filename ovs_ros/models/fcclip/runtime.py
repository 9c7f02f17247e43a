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
from torch import Tensor

from ovs_ros.text_cache import TextEmbeddingCache
from ovs_ros.vocabulary import Vocabulary, seen_classes

from .classification import synonym_text_classifier
from .ensemble import fcclip_ensemble_probs

FCCLIP_TEMPLATE_SET = "t14"  # FC-CLIP's VILD_PROMPT (fcclip/fcclip.py:26-41), the same 14 strings in the same order


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
