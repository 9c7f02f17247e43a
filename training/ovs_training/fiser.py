"""FOV-Seg's FiSeR (seed 002 eqs. 1-6): reconstruct a masked class name of the image from its other labels and the
image's patch tokens. Training only: the predictor and the [M] token are never exported.

Per image with GT classes c_1..c_K (its valid masks' classes, in class-id order):
* the label sentence `"c_1, c_2, ..., c_K"` (each class as this step's sampled synonym), BPE-encoded with CLIP's
  tokenizer, `<sot> ... <eot>`; every BPE token of one class (drawn uniformly) is replaced by the learnable [M]
  embedding, so the sequence keeps its length (the papers: "the same number of tokens as in the unmasked case");
* O = the frozen CLIP text tower's token states (ln_final applied), positions up to <eot>; P = CLIP-V's final patch
  tokens (CLS left out), which depend on the tuned f_q (and TeVA), so FiSeR's gradient reaches CLIP-V;
* the predictor (pre-norm Transformer encoder over `[Linear(O) + type_0, Linear(LN(P)) + type_1]`, text padding
  masked) -> the mean of its outputs at the [M] positions -> Linear -> z in CLIP's joint space;
* logits = CLIP's (frozen) logit scale x cos(z, e_i) over the image's own labels e_1..e_K (eq. 5; padding masked),
  e_i the template-mean text embedding of the sampled synonym; L_FiSeR = CE against the masked class, mean over the
  images with a label. Labels that do not fit the 77-token context are dropped from the sentence (and candidates).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def text_tower_parts(model: nn.Module):
    """(token_embedding, positional_embedding, transformer, attn_mask, ln_final) of an open_clip CLIP or
    CustomTextCLIP text tower (causal, no class token, no pad mask: OpenAI and EVA CLIP text towers)."""
    tower = getattr(model, "text", model)
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        raise NotImplementedError("FiSeR reads a causal CLIP text tower without class token or pad mask")
    return tower.token_embedding, tower.positional_embedding, tower.transformer, tower.attn_mask, tower.ln_final


class FiSeR(nn.Module):
    """The [M] token and the predictor (eq. 3); `loss` is eqs. 2-6 for one batch."""

    def __init__(self, text_width: int, visual_width: int, embed_dim: int, *, width: int = 256, layers: int = 2,
                 heads: int = 4, context_length: int = 77):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        self.mask_token = nn.Parameter(torch.randn(text_width) * 0.02)
        self.text_in = nn.Linear(text_width, width)
        self.visual_in = nn.Sequential(nn.LayerNorm(visual_width), nn.Linear(visual_width, width))
        self.type_embed = nn.Parameter(torch.zeros(2, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.predictor = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.context_length = int(context_length)
        self._tokenizer = SimpleTokenizer(context_length=self.context_length)

    # ------------------------------------------------------------------------------------------------------------
    def label_sentence(self, phrases: Sequence[str], masked: int) -> Optional[tuple]:
        """(ids [L], is_mask [L], kept label count) for `"p_1, ..., p_K"` with label `masked` as [M] tokens;
        None when the masked label does not fit the context."""
        tok = self._tokenizer
        ids, is_mask = [tok.sot_token_id], [False]
        comma = tok.encode(",")
        kept = 0
        for i, phrase in enumerate(phrases):
            sep, words = (comma if i else []), tok.encode(phrase)
            if len(ids) + len(sep) + len(words) + 1 > self.context_length:
                break
            ids.extend(sep + words)
            is_mask.extend([False] * len(sep) + [i == masked] * len(words))
            kept += 1
        if masked >= kept:
            return None
        ids.append(tok.eot_token_id)
        is_mask.append(False)
        return ids, is_mask, kept

    def token_states(self, clip_model: nn.Module, ids: Tensor, is_mask: Tensor) -> Tensor:
        """Frozen text tower over `[N, 77]` ids with [M] in place of the masked tokens -> `[N, 77, W]`."""
        embed, pos, transformer, attn_mask, ln_final = text_tower_parts(clip_model)
        x = embed(ids)
        x = torch.where(is_mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = x + pos[: x.shape[1]].to(x.dtype)
        x = transformer(x, attn_mask=attn_mask)
        return ln_final(x)

    def loss(self, clip_model: nn.Module, image_tokens: Tensor, class_ids: Tensor, class_phrases: List[str],
             class_text: Tensor, logit_scale: Tensor, generator: torch.Generator) -> Tensor:
        """L_FiSeR of a batch.

        Args:
            image_tokens: `[B, 1 + HW, C]` CLIP-V's final tokens (CLS first).
            class_ids: `[B, Q]` GT class of each mask, -1 = ignored.
            class_phrases: this step's sampled synonym of every class (index = class id).
            class_text: `[K, D]` L2-normalised text embedding of each class's sampled synonym.
            logit_scale: CLIP's log temperature (frozen); the cosine is scaled by min(exp, 100).
            generator: draws the masked label of each image (CPU).
        """
        device = image_tokens.device
        rows, sentences, targets, candidates = [], [], [], []
        for b in range(class_ids.shape[0]):
            labels = sorted({int(c) for c in class_ids[b].tolist() if c >= 0})
            if not labels:
                continue
            masked = int(torch.randint(len(labels), (1,), generator=generator))
            built = self.label_sentence([class_phrases[c] for c in labels], masked)
            if built is None:
                continue
            ids, is_mask, kept = built
            rows.append(b)
            sentences.append((ids, is_mask))
            targets.append(masked)
            candidates.append(labels[:kept])
        if not rows:
            return image_tokens.sum() * 0.0
        n, length = len(rows), self.context_length
        ids = torch.zeros(n, length, dtype=torch.long)
        is_mask = torch.zeros(n, length, dtype=torch.bool)
        text_pad = torch.ones(n, length, dtype=torch.bool)
        for i, (seq, mask) in enumerate(sentences):
            ids[i, : len(seq)] = torch.tensor(seq)
            is_mask[i, : len(seq)] = torch.tensor(mask)
            text_pad[i, : len(seq)] = False
        ids, is_mask, text_pad = ids.to(device), is_mask.to(device), text_pad.to(device)
        states = self.token_states(clip_model, ids, is_mask)  # n, L, W
        patches = image_tokens[torch.tensor(rows, device=device), 1:]  # n, HW, C
        h = torch.cat([self.text_in(states) + self.type_embed[0], self.visual_in(patches) + self.type_embed[1]], 1)
        pad = torch.cat([text_pad, torch.zeros(n, patches.shape[1], dtype=torch.bool, device=device)], 1)
        h = self.predictor(h, src_key_padding_mask=pad)[:, :length]
        weights = is_mask.to(h.dtype).unsqueeze(-1)
        z = self.out((h * weights).sum(1) / weights.sum(1))  # n, D
        k_max = max(len(c) for c in candidates)
        cand_index = torch.zeros(n, k_max, dtype=torch.long)
        cand_pad = torch.ones(n, k_max, dtype=torch.bool)
        for i, c in enumerate(candidates):
            cand_index[i, : len(c)] = torch.tensor(c)
            cand_pad[i, : len(c)] = False
        cand = class_text.float()[cand_index.to(device)]  # n, K_max, D
        cos = torch.einsum("nd,nkd->nk", F.normalize(z.float(), dim=-1), F.normalize(cand, dim=-1))
        logits = (cos * logit_scale.float().exp().clamp(max=100.0)).masked_fill(cand_pad.to(device), float("-inf"))
        return F.cross_entropy(logits, torch.tensor(targets, device=device))
