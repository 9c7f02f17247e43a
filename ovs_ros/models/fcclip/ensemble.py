"""FC-CLIP's geometric ensemble of the in-vocabulary (decoder) and out-of-vocabulary (frozen CLIP) classifiers
(`fcclip/fcclip.py:361-402`, after ODISE).

`p_in = softmax_K(in_logits[:, :K])`, `p_out = softmax_K(out_logits[:, :K])` (void dropped from both);
`log p = log(p_in^(1-a) * p_out^a)` with `a = alpha` on seen classes (a name shared with the generator's training
classes), `beta` on unseen ones; then `[softmax_K(log p) * (1 - p_void), p_void]` with `p_void` from the softmax of
the in-vocabulary logits *with* void. No epsilon inside the log (unlike MaskCLIP++'s ensemble, `postprocess.py`).
Seen and unseen are selected with `where`, not by multiplying with the 0/1 mask as FC-CLIP does: equal wherever
FC-CLIP is finite, and a probability that underflows to 0 (logit gaps > ~88 at logit scale 100) gives that class
probability 0 instead of `-inf * 0 = NaN` for the whole query.
"""
from __future__ import annotations

import torch
from torch import Tensor


def fcclip_ensemble_probs(in_vocab_logits: Tensor, out_vocab_logits: Tensor, seen: Tensor, alpha: float,
                          beta: float) -> Tensor:
    """`[..., K + 1]` in- and out-of-vocabulary logits (void last), `[K]` bool seen -> `[..., K + 1]` probabilities
    (FC-CLIP `mask_cls_probs`, void last)."""
    if in_vocab_logits.shape != out_vocab_logits.shape:
        raise ValueError(f"in_vocab_logits {tuple(in_vocab_logits.shape)} and out_vocab_logits "
                         f"{tuple(out_vocab_logits.shape)} differ")
    k = in_vocab_logits.shape[-1] - 1
    if seen.shape != (k,):
        raise ValueError(f"seen must be [{k}] (one flag per class), got {tuple(seen.shape)}")
    p_in = in_vocab_logits[..., :-1].softmax(-1)
    p_out = out_vocab_logits[..., :-1].softmax(-1)
    logits_seen = (p_in ** (1 - alpha) * p_out ** alpha).log()
    logits_unseen = (p_in ** (1 - beta) * p_out ** beta).log()
    cls = torch.where(seen.to(device=p_in.device, dtype=torch.bool), logits_seen, logits_unseen)
    p_void = in_vocab_logits.softmax(-1)[..., -1:]
    return torch.cat([cls.softmax(-1) * (1.0 - p_void), p_void], dim=-1)
