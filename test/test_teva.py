"""TeVA (FISA SEVE / FOV-Seg) at runtime: the any-overlap mask rule, TeVA off = the MaskCLIP++ path bit for bit,
mask embeddings that follow the vocabulary, the Segmenter passing the text, and engine backends refusing it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovs_ros.config_utils import ConfigError
from ovs_ros.models.clip import build_tiny_classifier
from ovs_ros.models.clip.mask_tokens import (
    masks_to_patch_bias,
    resample_masks_to_grid,
    vit_blocks,
    vit_embed,
    vit_output_head,
)
from ovs_ros.models.clip.teva import any_overlap_patch_bias

TEVA = {"enabled": True, "rank": 8, "adapter_hidden": 4, "adapter_grid_factor": 4}


def _teva_classifier(family: str = "vit", *, trained: bool = True, seed: int = 0):
    clf = build_tiny_classifier(family, input_short_side=64, seed=seed, mask_prior_blocks=4, teva=dict(TEVA))
    if trained:  # what training does: g_o leaves zero, so the mask tokens read the text
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            for out in clf.teva.g_o:
                out.weight.normal_(0.0, 1.0)
    return clf.eval()


def _inputs(q: int = 4, hw=(64, 96), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, *hw, generator=g)
    masks = torch.rand(1, q, *hw, generator=g)
    masks[0, -1] = 0.0  # an empty proposal
    return pixels, masks


def _text(k: int, seed: int, dim: int = 32):
    return F.normalize(torch.randn(k, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---------------------------------------------------------------------------------------------------------------
def test_any_overlap_rule_matches_its_literal_statement():
    """Eq. 11: M(i, j) = 0 if mask i has any pixel (> 0.5) in patch j, else the -100 stand-in for -inf."""
    g = torch.Generator().manual_seed(3)
    f, h, w = 4, 3, 5
    cells = (torch.rand(2, 3, h * f, w * f, generator=g) ** 4)  # mostly below 0.5: sparse coverage
    cells[0, 0] = 0.0
    cells[0, 0, 5, 9] = 0.51  # one pixel in patch (1, 2)
    cells[1, 2] = 0.5  # exactly 0.5 is not covered (strict)
    bias = any_overlap_patch_bias(cells, f)
    ref = torch.empty(2, 3, h * w)
    for b in range(2):
        for i in range(3):
            for py in range(h):
                for px in range(w):
                    patch = cells[b, i, py * f:(py + 1) * f, px * f:(px + 1) * f]
                    ref[b, i, py * w + px] = 0.0 if bool((patch > 0.5).any()) else -100.0
    assert torch.equal(bias, ref)
    assert bias[0, 0].eq(0).sum() == 1 and bias[0, 0, 1 * w + 2] == 0
    assert bias[1, 2].eq(-100).all()


def test_untrained_adapter_is_the_identity_and_trains_through_the_rule():
    clf = _teva_classifier(trained=False)
    masks = torch.rand(1, 3, 64, 96)
    assert torch.equal(clf.teva.adapter(masks), masks)
    # at the patch size the adapter grid is the CLIP input itself: the rule reads the raw pixels
    clf.teva.config.adapter_grid_factor = 16
    bias = clf.teva.patch_bias(masks, (4, 6))
    assert torch.equal(bias, any_overlap_patch_bias(masks, 16))
    # the binary rule has no gradient of its own; the straight-through term gives the adapter one
    weights = torch.randn_like(bias)
    (bias * weights).sum().backward()
    assert clf.teva.adapter.conv2.weight.grad.abs().sum() > 0


def _old_vit_neck_block(block, x, mask_tokens, patch_bias):
    """Literal re-statement of the pre-TeVA `neck_block` (family "vit"), op for op."""
    n = x.shape[1]
    y = torch.cat([x, mask_tokens], dim=1)
    attn = block.attn
    y_normed = block.ln_1(y)
    q, k, v = F.linear(y_normed, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], attn.num_heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    k_img, v_img = k[:, :, :n], v[:, :, :n]
    o_img = F.scaled_dot_product_attention(q[:, :, :n], k_img, v_img)
    o_mask = F.scaled_dot_product_attention(q[:, :, n:], k_img[:, :, 1:], v_img[:, :, 1:],
                                            attn_mask=patch_bias.to(q.dtype))
    o = torch.cat([o_img, o_mask], dim=2)
    b, hh, t, d = o.shape
    o = attn.out_proj(o.transpose(1, 2).reshape(b, t, hh * d))
    y = y + block.ls_1(o)
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y[:, :n], y[:, n:]


def test_teva_off_is_bit_identical_to_the_maskclippp_path():
    clf = build_tiny_classifier("vit", input_short_side=64, seed=0).eval()
    assert clf.teva is None and not clf.vocabulary_dependent
    assert not any(name.startswith("teva") for name, _ in clf.named_parameters())
    pixels, masks = _inputs()
    with torch.no_grad():
        out = clf.encode_masks(pixels, masks)
        ignored = clf.encode_masks(pixels, masks, text_embeddings=_text(5, 0))
        visual = clf.model.visual
        x, _, grid = vit_embed("vit", visual, pixels)
        blocks = vit_blocks("vit", visual)
        first = len(blocks) - clf.mask_prior_blocks
        grid_masks = resample_masks_to_grid(masks, grid).flatten(2)
        for blk in blocks[:first]:
            x = blk(x)
        tokens = x[:, :1].expand(-1, masks.shape[1], -1)
        for i in range(first, len(blocks)):
            bias = masks_to_patch_bias(grid_masks, clf.mask_logit_scale[len(blocks) - 1 - i])
            x, tokens = _old_vit_neck_block(blocks[i], x, tokens, bias)
        ref = vit_output_head("vit", visual)(tokens)
    assert torch.equal(out.mask_embeddings, ref)
    assert torch.equal(ignored.mask_embeddings, out.mask_embeddings)


@pytest.mark.parametrize("family", ["vit", "eva"])
def test_teva_mask_embeddings_follow_the_vocabulary(family):
    clf = _teva_classifier(family)
    assert clf.vocabulary_dependent
    pixels, masks = _inputs()
    with torch.no_grad():
        a = clf.encode_masks(pixels, masks, _text(5, 0)).mask_embeddings
        again = clf.encode_masks(pixels, masks, _text(5, 0)).mask_embeddings
        b = clf.encode_masks(pixels, masks, _text(7, 1)).mask_embeddings
    assert torch.equal(a, again)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()  # the empty proposal too
    assert (a - b).abs().max() > 1e-4 * a.abs().max()
    with pytest.raises(ValueError, match="needs the target text embeddings"):
        clf.encode_masks(pixels, masks)


def test_untrained_teva_ignores_the_text_and_uses_the_binary_rule():
    """g_o starts at zero: an untrained TeVA is MaskCLIP++'s mask tokens with the any-overlap rule."""
    clf = _teva_classifier(trained=False)
    pixels, masks = _inputs()
    with torch.no_grad():
        a = clf.encode_masks(pixels, masks, _text(5, 0)).mask_embeddings
        b = clf.encode_masks(pixels, masks, _text(3, 1)).mask_embeddings
        visual = clf.model.visual
        x, _, grid = vit_embed("vit", visual, pixels)
        blocks = vit_blocks("vit", visual)
        bias = any_overlap_patch_bias(F.interpolate(masks, size=(grid[0] * 4, grid[1] * 4), mode="bilinear",
                                                    align_corners=False), 4)
        bias = bias.unsqueeze(1).expand(-1, blocks[0].attn.num_heads, -1, -1)
        tokens = x[:, :1].expand(-1, masks.shape[1], -1)
        for blk in blocks:
            x, tokens = _old_vit_neck_block(blk, x, tokens, bias)
        ref = vit_output_head("vit", visual)(tokens)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-6)


def test_padded_targets_are_never_read():
    clf = _teva_classifier()
    pixels, masks = _inputs()
    text = _text(3, 0)
    padded = torch.cat([text, _text(4, 9)]).unsqueeze(0)
    padding = torch.tensor([[False] * 3 + [True] * 4])
    with torch.no_grad():
        a = clf.encode_masks(pixels, masks, text).mask_embeddings
        b = clf.encode_masks(pixels, masks, padded, padding).mask_embeddings
        none = clf.encode_masks(pixels, masks, padded, torch.ones_like(padding)).mask_embeddings
        untrained = _teva_classifier(trained=False).encode_masks(pixels, masks, text).mask_embeddings
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(none, untrained, rtol=1e-5, atol=1e-6)  # no valid target: nothing is read


def test_convnext_refuses_teva():
    with pytest.raises(ValueError, match="TeVA needs a ViT"):
        build_tiny_classifier("convnext", teva={"enabled": True})


# ---------------------------------------------------------------------------------------------------------------
def _segmenter_overrides(**more):
    base = {"classifier.model_name": "tiny-vit", "classifier.input_short_side": 64, "classifier.max_long_side": 96,
            "classifier.options": {"teva": dict(TEVA), "mask_prior_blocks": 4},
            "generator.input_short_side": 64, "generator.max_long_side": 96,
            "vocabulary": ["cat", "dog", "stuff:grass"]}
    base.update(more)
    return base


def test_segmenter_passes_the_current_vocabulary_to_teva():
    """A vocabulary switch reuses the text cache and the next frame's mask embeddings read the new text."""
    import numpy as np

    from ovs_ros.segmenter import Segmenter

    seg = Segmenter.from_config("tiny", _segmenter_overrides())
    assert seg.classifier.teva is not None
    torch.manual_seed(5)
    with torch.no_grad():
        for out in seg.classifier.teva.g_o:
            out.weight.normal_(0.0, 1.0)
    seen = []
    encode = seg.classifier.encode_masks

    def spy(pixels, masks, text_embeddings=None, text_padding_mask=None):
        seen.append(text_embeddings)
        out = encode(pixels, masks, text_embeddings, text_padding_mask)
        seen.append(out.mask_embeddings)
        return out

    seg.classifier.encode_masks = spy
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    seg.segment(image)
    encoded = seg.text_cache.stats["phrases_encoded"]
    seg.set_vocabulary(["cat", "dog", "stuff:grass", "car"])
    assert seg.text_cache.stats["phrases_encoded"] == encoded + 1  # only the new word is encoded
    seg.segment(image)
    first_text, first_masks, second_text, second_masks = seen
    emb = seg._current().embeddings.text_embeddings
    torch.testing.assert_close(second_text, F.normalize(emb.mean(1), dim=-1))
    assert first_text.shape[0] == 3 and second_text.shape[0] == 4
    assert (first_masks - second_masks).abs().max() > 0


@pytest.mark.parametrize("backend", ["onnxruntime", "compiled", "tensorrt"])
def test_engine_backends_refuse_a_teva_classifier(backend):
    from ovs_ros.segmenter import Segmenter

    overrides = _segmenter_overrides(backend=backend, **{"generator.fixed_hw": [64, 96],
                                                          "classifier.fixed_hw": [64, 96]})
    with pytest.raises(ConfigError, match=f"backend {backend} cannot run a TeVA classifier"):
        Segmenter.from_config("tiny", overrides)


def test_engine_export_refuses_a_teva_classifier(tmp_path):
    from ovs_ros.engines import export_engines
    from ovs_ros.segmenter_config import load_segmenter_config

    config = load_segmenter_config("tiny", _segmenter_overrides())
    with pytest.raises(ConfigError, match="cannot export a TeVA classifier"):
        export_engines(config, tmp_path)


def test_card_teva_keys_are_checked_and_match_the_classifier_config():
    from ovs_ros.models.cards import TEVA_CARD_KEYS, ModelCard
    from ovs_ros.models.clip.config import TevaConfig

    assert set(TevaConfig().card_dict()) == TEVA_CARD_KEYS
    fields = dict(name="x", role="classifier", architecture="tiny-vit", filename="x.safetensors",
                  format="ovs_safetensors")
    assert ModelCard(**fields, teva={"rank": 4}).teva == {"rank": 4}
    with pytest.raises(ValueError, match="unknown teva key"):
        ModelCard(**fields, teva={"heads": 2})


def test_backend_auto_runs_a_teva_classifier_eager(monkeypatch):
    """Where auto would pick an engine backend (CUDA with fixed shapes), a TeVA classifier runs eager instead."""
    from types import SimpleNamespace

    import ovs_ros.backends as backends

    monkeypatch.setattr(backends, "resolve_backend", lambda name, device, config: "tensorrt")
    clf = _teva_classifier(trained=False)
    generator = object()
    out = backends.attach_backend(SimpleNamespace(backend="auto"), generator, clf, torch.device("cpu"), torch.float32)
    assert out == (generator, clf, "eager")
    with pytest.raises(ConfigError, match="backend tensorrt cannot run a TeVA classifier"):
        backends.attach_backend(SimpleNamespace(backend="tensorrt"), generator, clf, torch.device("cpu"),
                                torch.float32)
