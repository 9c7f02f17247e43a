"""What the Segmenter needs around a MAFT+ generator: FC-CLIP's runtime (its own text tower and cache, the same
VILD templates, FC-CLIP's mask chain) with MAFT+'s out-of-vocabulary branch and class probabilities.

The vocabulary's text classifier is cached as FC-CLIP's is (`FCCLIPRuntime.prepare`, once per vocabulary); the CDT
runs per frame on that cached classifier and the frame's `clip_dense_embeddings`, after the generator engine, so a
vocabulary switch stays a cache look-up.
"""
from __future__ import annotations

from torch import Tensor

from ovs_ros.models.fcclip.runtime import FCCLIPRuntime, FCCLIPVocabulary

from .inference import maftp_class_probs


class MAFTPlusRuntime(FCCLIPRuntime):
    """Text side and logits of a MAFT+ generator (eager, or an engine standing in for it)."""

    def out_of_vocabulary_logits(self, generated, vocab: FCCLIPVocabulary) -> Tensor:
        """`[Q, K + 1]` CLIP logits of image 0 against the CDT-transferred text classifier, void last."""
        transferred = self.generator.transferred_text_classifier(generated.clip_dense_embeddings[:1].float(),
                                                                 vocab.text_classifier)
        return self.generator.out_of_vocabulary_logits(generated.clip_mask_embeddings[:1].float(), transferred,
                                                       vocab.synonym_class_index, vocab.num_classes)[0]

    @staticmethod
    def ensemble(in_logits: Tensor, out_logits: Tensor, vocab: FCCLIPVocabulary, alpha: float, beta: float) -> Tensor:
        """MAFT+'s class probabilities at alpha = beta = 1 (its configs: no ensemble); other values give FC-CLIP's
        geometric ensemble of the decoder and the CDT branch (a departure from MAFT+, never its default)."""
        if float(alpha) == 1.0 and float(beta) == 1.0:
            return maftp_class_probs(in_logits, out_logits)
        return FCCLIPRuntime.ensemble(in_logits, out_logits, vocab, alpha, beta)
