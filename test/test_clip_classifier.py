"""CLIP mask classifier on tiny random open_clip models (EVA02 with RoPE, OpenAI-style ViT, ConvNeXt), CPU, seeded."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

from ovs_ros.models.clip import (  # noqa: E402
    ClipClassifier,
    ClipClassifierConfig,
    IdentityPSM,
    LinearPSM,
    PseudoTextPSM,
    convert_maskclippp_eva_state_dict,
    load_maskclippp_checkpoint,
    mask_class_logits,
)
from ovs_ros.models.clip.mask_tokens import (  # noqa: E402
    eva_rope_table,
    masks_to_patch_bias,
    resample_masks_to_grid,
    vit_blocks,
    vit_embed,
    vit_output_head,
    vit_plain_block,
)

from ovs_ros.models.clip.tiny import (  # noqa: E402
    TINY_CONVNEXT_CFG as CONVNEXT_CFG,
    TINY_EMBED_DIM as EMBED_DIM,
    TINY_NATIVE_SIZE as NATIVE,
    TINY_VIT_CFG as VIT_CFG,
    tiny_eva_open_clip_model as _tiny_eva_model,
)


def _jitter_(model: nn.Module, seed: int) -> None:
    """Random non-trivial values everywhere (norm weights != 1, biases != 0) so every key map and bias matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


CONVNEXT_MLP_CFG = copy.deepcopy(CONVNEXT_CFG)
CONVNEXT_MLP_CFG["vision_cfg"]["timm_proj"] = "mlp"  # the convnext_large_d_320 head


def _build(family: str) -> ClipClassifier:
    torch.manual_seed(0)
    if family == "eva":
        clf = ClipClassifier.from_open_clip(_tiny_eva_model(), ClipClassifierConfig(model_name="tiny-eva"))
    elif family == "vit":
        clf = ClipClassifier(ClipClassifierConfig(model_name="tiny-vit", open_clip_model_cfg=VIT_CFG,
                                                  quick_gelu=True))
    elif family == "convnext":
        clf = ClipClassifier(ClipClassifierConfig(model_name="tiny-convnext", open_clip_model_cfg=CONVNEXT_CFG))
    else:
        clf = ClipClassifier(ClipClassifierConfig(model_name="tiny-convnext-mlp",
                                                  open_clip_model_cfg=CONVNEXT_MLP_CFG))
    _jitter_(clf, seed=1)
    if clf.mask_logit_scale is not None:
        with torch.no_grad():  # away from the -5 init so the soft in-mask bias is visible
            clf.mask_logit_scale.copy_(torch.linspace(-1.0, 1.0, clf.mask_logit_scale.numel()).view_as(
                clf.mask_logit_scale))
    return clf.eval()


_CACHE = {}


def _model(family: str) -> ClipClassifier:
    if family not in _CACHE:
        _CACHE[family] = _build(family)
    return _CACHE[family]


def _pixels(b: int, h: int, w: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _soft_masks(b: int, q: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, q, max(h // 8, 1), max(w // 8, 1), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1) ** 2


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["convnext", "convnext_mlp"])
def test_convnext_full_mask_reproduces_encode_image(family):
    clf = _model(family)
    assert clf.family == "convnext" and clf.size_divisibility == 32 and clf.embed_dim == EMBED_DIM
    px = _pixels(2, 64, 96)
    with torch.no_grad():
        ref = clf.model.encode_image(px)
        out = clf.encode_masks(px, torch.ones(2, 1, 64, 96))
    assert out.mask_embeddings.shape == (2, 1, EMBED_DIM)
    assert out.patch_embeddings.shape == (2, 2 * 3, EMBED_DIM)
    assert (out.mask_embeddings[:, 0] - ref).abs().max() <= 1e-4
    assert (out.image_embeddings - ref).abs().max() <= 1e-6
    # patch embeddings are the one-hot masks of each stride-32 cell
    one_hot = torch.zeros(2, 6, 2, 3)
    one_hot.view(2, 6, 6)[:, torch.arange(6), torch.arange(6)] = 1.0
    with torch.no_grad():
        cells = clf.encode_masks(px, F.interpolate(one_hot, size=(64, 96), mode="nearest")).mask_embeddings
    assert (cells - out.patch_embeddings).abs().max() <= 1e-4


@pytest.mark.parametrize("family", ["eva", "vit"])
def test_vit_image_path_equals_open_clip_encode_image(family):
    clf = _model(family)
    assert clf.family == family and clf.size_divisibility == 16 and clf.mask_logit_scale.shape == (3, 4)
    px = _pixels(2, NATIVE, NATIVE)
    with torch.no_grad():
        ref = clf.model.encode_image(px)
        out = clf.encode_masks(px, _soft_masks(2, 4, NATIVE, NATIVE))
        ours = clf.encode_image(px)
    assert (out.image_embeddings - ref).abs().max() <= 1e-5
    assert (ours - ref).abs().max() <= 1e-5
    assert out.patch_embeddings is None


@pytest.mark.parametrize("family", ["eva", "vit", "convnext"])
def test_mask_embeddings_are_independent_of_other_masks(family):
    clf = _model(family)
    h, w = (96, 64) if family == "convnext" else (80, 96)
    px = _pixels(2, h, w)
    masks = _soft_masks(2, 6, h, w)
    with torch.no_grad():
        base = clf.encode_masks(px, masks[:, :3]).mask_embeddings
        perm = torch.tensor([4, 2, 0, 5, 1, 3])
        more = clf.encode_masks(px, masks[:, perm]).mask_embeddings
        single = clf.encode_masks(px, masks[:, 1:2]).mask_embeddings
    inverse = {int(p): i for i, p in enumerate(perm)}
    for j in range(3):
        assert (more[:, inverse[j]] - base[:, j]).abs().max() <= 1e-5
    assert (single[:, 0] - base[:, 1]).abs().max() <= 1e-5
    # and each image of the batch alone gives the same
    with torch.no_grad():
        alone = clf.encode_masks(px[1:], masks[1:, :3]).mask_embeddings
    assert (alone[0] - base[1]).abs().max() <= 1e-5


def _joined_sequence_reference(clf: ClipClassifier, px: torch.Tensor, masks: torch.Tensor):
    """MaskCLIP++'s form: one [Q | CLS | HW] sequence through the original blocks with the full
    [heads, Q+1+HW, Q+1+HW] bias (-inf between streams); EVA RoPE on the HW patches only."""
    family, visual = clf.family, clf.model.visual
    x, rope, grid = vit_embed(family, visual, px)
    blocks = vit_blocks(family, visual)
    n, nb = len(blocks), clf.mask_prior_blocks
    for i in range(n - nb):
        x = vit_plain_block(family, blocks[i], x, rope)
    b, q, hw = x.shape[0], masks.shape[1], x.shape[1] - 1
    grid_masks = resample_masks_to_grid(masks, grid).flatten(2)
    seq = torch.cat([x[:, :1].expand(-1, q, -1), x], dim=1)
    length = q + 1 + hw
    for i in range(n - nb, n):
        heads = clf.mask_logit_scale.shape[1]
        full = torch.zeros(b, heads, length, length)
        full[:, :, q:, :q] = float("-inf")
        full[:, :, :q, :q + 1] = float("-inf")
        full[:, :, :q, q + 1:] = masks_to_patch_bias(grid_masks, clf.mask_logit_scale[n - 1 - i])
        if family == "eva":
            attn = blocks[i].attn
            saved = attn.num_prefix_tokens
            attn.num_prefix_tokens = q + 1  # timm rotates everything after the prefix: make that the HW patches
            try:
                seq = blocks[i](seq, rope=rope, attn_mask=full)
            finally:
                attn.num_prefix_tokens = saved
        else:
            seq = blocks[i](seq, attn_mask=full.reshape(b * heads, length, length))
    head = vit_output_head(family, visual)
    return head(seq[:, :q]), head(seq[:, q])


@pytest.mark.parametrize("family", ["eva", "vit"])
@pytest.mark.parametrize("size_hw", [(NATIVE, NATIVE), (80, 96)])
def test_cross_attention_equals_joined_sequence(family, size_hw):
    clf = _model(family)
    px = _pixels(2, *size_hw)
    masks = _soft_masks(2, 5, *size_hw)
    masks[0, 0] = 0.0  # an empty mask
    with torch.no_grad():
        out = clf.encode_masks(px, masks)
        ref_masks, ref_image = _joined_sequence_reference(clf, px, masks)
    assert (out.mask_embeddings - ref_masks).abs().max() <= 1e-5
    assert (out.image_embeddings - ref_image).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["eva", "vit", "convnext"])
def test_empty_and_one_pixel_masks_are_finite(family):
    clf = _model(family)
    px = _pixels(1, NATIVE, NATIVE)
    masks = torch.zeros(1, 3, NATIVE, NATIVE)
    masks[0, 1, 17, 40] = 1.0
    masks[0, 2, 0, 0] = 0.3
    with torch.no_grad():
        out = clf.encode_masks(px, masks)
    assert torch.isfinite(out.mask_embeddings).all()


def test_eva_rope_table_matches_timm_at_native_grid():
    trunk = _model("eva").model.visual.trunk
    ours = eva_rope_table(trunk.rope, tuple(trunk.patch_embed.grid_size))
    assert torch.equal(ours, trunk.rope.get_embed())
    assert eva_rope_table(trunk.rope, (6, 5)).shape == (30, ours.shape[1])


def test_bad_input_sizes_raise():
    clf = _model("vit")
    with pytest.raises(ValueError, match="multiples of 16"):
        clf.encode_masks(_pixels(1, 70, 64), torch.zeros(1, 2, 70, 64))
    with pytest.raises(ValueError, match="mask_probs"):
        clf.encode_masks(_pixels(1, 64, 64), torch.zeros(2, 2, 64, 64))


# ---------------------------------------------------------------------------------------------------------------
def test_linear_psm_one_template_positive_weights_keeps_order():
    torch.manual_seed(0)
    psm = LinearPSM(num_templates=1, width=16)
    with torch.no_grad():
        psm.corr_proj_in[0].weight.uniform_(0.1, 1.0)
        psm.corr_proj_out[0].weight.uniform_(0.1, 1.0)
    text = F.normalize(torch.randn(7, 1, 12), dim=-1)
    masks = torch.randn(2, 5, 12)
    scale = torch.tensor(4.6052)
    logits = psm(masks, text, scale)
    cos = F.normalize(masks, dim=-1) @ text[:, 0].T
    assert logits.shape == (2, 5, 7)
    assert torch.equal(logits.argsort(dim=-1), cos.argsort(dim=-1))
    identity = IdentityPSM()(masks, text, scale)
    assert torch.allclose(identity, cos * 100.0, atol=1e-4)  # exp(4.6052) clamps to 100


def test_pseudo_text_psm_shapes_and_logits():
    torch.manual_seed(0)
    psm = PseudoTextPSM(text_dim=16, image_dim=24, num_heads=8).eval()
    text = F.normalize(torch.randn(9, 3, 16), dim=-1)
    out = psm(torch.randn(2, 4, 16), text, patch_embeddings=torch.randn(2, 6, 24))
    assert out.shape == (2, 4, 9) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="patch_embeddings"):
        psm(torch.randn(2, 4, 16), text)


@pytest.mark.parametrize("psm_kind", ["identity", "linear", "pseudo"])
def test_mask_class_logits_max_over_synonyms_matches_loop(psm_kind):
    torch.manual_seed(0)
    b, q, s, t, d, k = 2, 4, 9, 3, 16, 5
    text = F.normalize(torch.randn(s, t, d), dim=-1)
    syn_class = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1, 0])  # class 4 has no synonym
    masks = torch.randn(b, q, d)
    patches = torch.randn(b, 6, d)
    psm = {"identity": IdentityPSM(), "linear": LinearPSM(t, 8),
           "pseudo": PseudoTextPSM(d, d, num_heads=8)}[psm_kind].eval()
    scale = torch.tensor(2.0)
    with torch.no_grad():
        out = mask_class_logits(masks, text, syn_class, k, psm, scale, patch_embeddings=patches)
        syn = psm(masks, text, scale, patch_embeddings=patches)
    ref = torch.full((b, q, k), float("-inf"))
    for bi in range(b):
        for qi in range(q):
            for si in range(s):
                c = int(syn_class[si])
                ref[bi, qi, c] = max(ref[bi, qi, c], syn[bi, qi, si])
    assert out.shape == (b, q, k)
    assert torch.equal(out, ref)


# ---------------------------------------------------------------------------------------------------------------
def _to_eva_clip_names(visual_sd):
    """Inverse of corrections.md 4, written independently of convert.py: our TimmModel names -> EVA-CLIP names."""
    out = {}
    for key, value in visual_sd.items():
        assert key.startswith("trunk."), key
        k = key[len("trunk."):]
        for ours, theirs in ((".attn.q_proj.bias", ".attn.q_bias"), (".attn.v_proj.bias", ".attn.v_bias"),
                             (".attn.norm.", ".attn.inner_attn_ln."), (".mlp.fc1_g.", ".mlp.w1."),
                             (".mlp.fc1_x.", ".mlp.w2."), (".mlp.fc2.", ".mlp.w3."), (".mlp.norm.", ".mlp.ffn_ln.")):
            k = k.replace(ours, theirs)
        out["visual_encoder.proxy." + k] = value.clone()
    return out


def test_maskclippp_eva_key_map_roundtrip(tmp_path):
    src = _model("eva")
    psm_src = LinearPSM(num_templates=2, width=8)
    fake = _to_eva_clip_names(src.model.visual.state_dict())
    assert "visual_encoder.proxy.head.weight" in fake and "visual_encoder.proxy.blocks.0.mlp.w3.weight" in fake
    fake["visual_encoder.mask_logit_scale"] = src.mask_logit_scale.detach().clone()
    fake.update({"psm." + k: v.clone() for k, v in psm_src.state_dict().items()})

    dst = _build("eva")
    with torch.no_grad():  # make the destination differ first
        for p in dst.parameters():
            p.mul_(0.5)
    psm_dst = LinearPSM(num_templates=2, width=8)
    torch.save({"model": fake}, tmp_path / "maskclippp.pth")
    load_maskclippp_checkpoint(dst, psm_dst, tmp_path / "maskclippp.pth")
    px, masks = _pixels(1, 80, 64), _soft_masks(1, 3, 80, 64)
    with torch.no_grad():
        a, b = src.encode_masks(px, masks), dst.encode_masks(px, masks)
    assert torch.equal(a.mask_embeddings, b.mask_embeddings)
    assert torch.equal(dst.mask_logit_scale, src.mask_logit_scale)
    for k, v in psm_src.state_dict().items():
        assert torch.equal(psm_dst.state_dict()[k], v)

    from safetensors.torch import save_file

    save_file(fake, str(tmp_path / "maskclippp.safetensors"))
    load_maskclippp_checkpoint(dst, psm_dst, tmp_path / "maskclippp.safetensors")

    bad = dict(fake)
    bad["visual_encoder.proxy.blocks.0.attn.relative_position_bias_table"] = torch.zeros(1)
    with pytest.raises(KeyError, match="relative_position_bias_table"):
        convert_maskclippp_eva_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_maskclippp_checkpoint(dst, psm_dst, tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["eva", "vit"])
def test_text_tower_matches_open_clip_and_fingerprint_tracks_weights(family):
    clf = _model(family)
    texts = ["a photo of a cat.", "a photo of a traffic light."]
    ids = clf.tokenize(texts)
    ref_ids = open_clip.get_tokenizer("ViT-B-16")(texts)
    assert torch.equal(ids, ref_ids)
    with torch.no_grad():
        ours = clf.encode_text(ids)
        ref = clf.model.encode_text(ref_ids)
    assert ours.shape == (2, EMBED_DIM)
    assert (ours - ref).abs().max() == 0
    fp = clf.text_fingerprint()
    assert fp == clf.text_fingerprint() and len(fp) == 64
    clf_copy = _build(family)
    assert clf_copy.text_fingerprint() == fp
    name, param = next((n, p) for n, p in clf_copy.model.named_parameters() if "ln_final" in n)
    original = param.detach().clone()
    with torch.no_grad():
        param[0] += 1e-3
    assert clf_copy.text_fingerprint() != fp
    with torch.no_grad():  # restoring it restores the fingerprint; a visual weight does not enter it
        param.copy_(original)
        next(clf_copy.model.visual.parameters()).add_(1.0)
    assert clf_copy.text_fingerprint() == fp


def test_mask_logit_scale_starts_at_minus_5_and_row_0_is_the_last_block(monkeypatch):
    """corrections.md 5: `[3, heads]`, initialised at -5, and MaskCLIP++ counts the rows from the last block."""
    import ovs_ros.models.clip.mask_tokens as mask_tokens

    torch.manual_seed(0)
    fresh = ClipClassifier.from_open_clip(_tiny_eva_model(), ClipClassifierConfig(model_name="tiny-eva"))
    assert fresh.mask_logit_scale.shape == (3, 4)
    assert torch.equal(fresh.mask_logit_scale, torch.full((3, 4), -5.0))
    with torch.no_grad():  # row r holds the value r everywhere, so each block's row can be read off its bias call
        fresh.mask_logit_scale.copy_(torch.arange(3.0).view(3, 1).expand(3, 4))
    rows_in_block_order = []
    real_bias = mask_tokens.masks_to_patch_bias

    def recording_bias(grid_masks, row):
        rows_in_block_order.append(int(row[0]))
        return real_bias(grid_masks, row)

    monkeypatch.setattr(mask_tokens, "masks_to_patch_bias", recording_bias)
    with torch.no_grad():
        fresh.encode_masks(_pixels(1, NATIVE, NATIVE), _soft_masks(1, 2, NATIVE, NATIVE))
    assert rows_in_block_order == [2, 1, 0]  # the last of the 3 mask-token blocks uses row 0


# The architectures MaskCLIP++ and the README name: (open_clip name, family, patch/stride, D, native input size).
PUBLISHED_CLIPS = [
    ("EVA02-B-16", "eva", 16, 512, 224),
    ("EVA02-L-14-336", "eva", 14, 768, 336),
    ("ViT-B-16", "vit", 16, 512, 224),
    ("ViT-L-14-336", "vit", 14, 768, 336),
    ("convnext_base_w_320", "convnext", 32, 640, 320),
    ("convnext_large_d_320", "convnext", 32, 768, 320),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,family,stride,dim,native", PUBLISHED_CLIPS, ids=[c[0] for c in PUBLISHED_CLIPS])
def test_published_architectures_build_with_random_weights(name, family, stride, dim, native):
    """Every named architecture builds from open_clip (random weights: none can be downloaded here), and its
    image path, with mask tokens or mask pooling running, equals open_clip's `encode_image`."""
    torch.manual_seed(0)
    clf = ClipClassifier(ClipClassifierConfig(model_name=name)).eval()
    assert clf.family == family and clf.size_divisibility == stride and clf.embed_dim == dim
    if family == "convnext":
        assert clf.mask_logit_scale is None
    else:
        heads = vit_blocks(family, clf.model.visual)[-1].attn.num_heads
        assert clf.mask_logit_scale.shape == (3, heads)
    px = _pixels(1, native, native)
    masks = torch.ones(1, 2, native, native)
    masks[:, 1, : native // 2] = 0.0
    with torch.no_grad():
        ref = clf.model.encode_image(px)
        out = clf.encode_masks(px, masks)
    assert out.mask_embeddings.shape == (1, 2, dim) and torch.isfinite(out.mask_embeddings).all()
    tolerance = 1e-4 * max(1.0, float(ref.abs().max()))
    assert (out.image_embeddings - ref).abs().max() <= tolerance
    if family == "convnext":  # a full-image mask pools the whole map: CLIP's own image embedding
        assert (out.mask_embeddings[:, 0] - ref).abs().max() <= tolerance
    del clf
