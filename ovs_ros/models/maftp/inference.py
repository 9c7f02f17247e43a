"""MAFT+'s class probabilities (`maft/maft_plus.py:380-393`): the out-of-vocabulary logits alone, softmax over the
K classes (void dropped), scaled by `1 - p_void`, with `p_void` from the softmax of the decoder's logits *with* void.
No ensemble (the in-vocabulary class logits are unused; `GEOMETRIC_ENSEMBLE_ALPHA/BETA -1`). MAFT+ then takes
`log(p + 1e-8)` and its merge a softmax of that, which returns `p` to within 1e-8: the merge here takes `p`."""
from __future__ import annotations

import torch
from torch import Tensor


def maftp_class_probs(in_vocab_logits: Tensor, out_vocab_logits: Tensor) -> Tensor:
    """`[..., K + 1]` decoder and CDT-classifier logits (void last) -> `[..., K + 1]` probabilities, void last."""
    if in_vocab_logits.shape != out_vocab_logits.shape:
        raise ValueError(f"in_vocab_logits {tuple(in_vocab_logits.shape)} and out_vocab_logits "
                         f"{tuple(out_vocab_logits.shape)} differ")
    p_void = in_vocab_logits.softmax(-1)[..., -1:]
    return torch.cat([out_vocab_logits[..., :-1].softmax(-1) * (1.0 - p_void), p_void], dim=-1)
