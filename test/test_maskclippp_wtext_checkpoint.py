"""MaskCLIP++ `_wtext` files (fine-tuned text tower) and EVA01-g files (fused qkv, plain MLP) on tiny models in the
released layouts, written by the tests; parity against literal re-statements of EVA-CLIP's modules
(MaskCLIPpp@8bf4718 `eva_clip/transformer.py`, `eva_clip/eva_vit_model.py`)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

from ovs_ros.models.clip import ClipClassifier, ClipClassifierConfig, LinearPSM, load_maskclippp_checkpoint  # noqa: E402
from ovs_ros.models.clip.convert_text import split_maskclippp_text_state_dict  # noqa: E402
from ovs_ros.models.clip.tiny import (  # noqa: E402
    TINY_EMBED_DIM,
    TINY_NATIVE_SIZE,
    TINY_TEXT_CFG,
    tiny_eva_open_clip_model,
)
from ovs_ros.text_cache import TextEmbeddingCache  # noqa: E402
from ovs_ros.vocabulary import Vocabulary  # noqa: E402

WIDTH, HEADS, LAYERS = TINY_TEXT_CFG["width"], TINY_TEXT_CFG["heads"], TINY_TEXT_CFG["layers"]
TEXTS = ["a photo of a cat.", "a photo of a traffic light.", "sky"]


def _jitter_(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _eva02(seed: int) -> ClipClassifier:
    torch.manual_seed(seed)
    clf = ClipClassifier.from_open_clip(tiny_eva_open_clip_model(), ClipClassifierConfig(model_name="tiny-eva"))
    _jitter_(clf, seed + 100)
    return clf.eval()


# --- the released layout, written independently of convert.py / convert_text.py ---------------------------------
def _eva02_visual_in_eva_clip_names(visual_sd):
    """corrections.md 4 backwards: our TimmModel names -> EVA-CLIP's."""
    out = {}
    for key, value in visual_sd.items():
        k = key[len("trunk."):]
        for ours, theirs in ((".attn.q_proj.bias", ".attn.q_bias"), (".attn.v_proj.bias", ".attn.v_bias"),
                             (".attn.norm.", ".attn.inner_attn_ln."), (".mlp.fc1_g.", ".mlp.w1."),
                             (".mlp.fc1_x.", ".mlp.w2."), (".mlp.fc2.", ".mlp.w3."), (".mlp.norm.", ".mlp.ffn_ln.")):
            k = k.replace(ours, theirs)
        out["visual_encoder.proxy." + k] = value.clone()
    return out


def _wtext_file(clf: ClipClassifier, psm: LinearPSM, text_sd) -> dict:
    """What MaskCLIP++ `saved_modules()` writes for a `_wtext` model: visual_encoder.*, psm.*, text_encoder.*."""
    out = _eva02_visual_in_eva_clip_names(clf.model.visual.state_dict())
    out["visual_encoder.mask_logit_scale"] = clf.mask_logit_scale.detach().clone()
    out.update({"psm." + k: v.clone() for k, v in psm.state_dict().items()})
    out.update({"text_encoder.proxy." + k: v.clone() for k, v in text_sd.items()})
    out["text_encoder.logit_scale"] = torch.tensor(math.log(1 / 0.05))
    return out


# --- literal re-statement of EVA-CLIP's TextTransformer (xattn=True, as EVA02-CLIP-L-14-336.json's text_cfg) -------
class _EvaClipAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.in_proj_weight = nn.Parameter(torch.randn((dim * 3, dim)) * self.scale)
        self.in_proj_bias = nn.Parameter(torch.zeros(dim * 3))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask=None):
        L, N, C = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q = q.contiguous().view(L, N, self.num_heads, -1).permute(1, 2, 0, 3).contiguous()
        k = k.contiguous().view(L, N, self.num_heads, -1).permute(1, 2, 0, 3).contiguous()
        v = v.contiguous().view(L, N, self.num_heads, -1).permute(1, 2, 0, 3).contiguous()
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, scale=self.scale, is_causal=attn_mask is not None)
        x = x.permute(2, 0, 1, 3).contiguous().view(L, N, C)
        return self.out_proj(x)


class _EvaClipBlock(nn.Module):
    def __init__(self, d_model, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = _EvaClipAttention(d_model, n_head)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d_model, d_model * 4))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(d_model * 4, d_model))

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))


class _EvaClipTextTransformer(nn.Module):
    def __init__(self, context_length, vocab_size, width, heads, layers, output_dim):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([_EvaClipBlock(width, heads) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, output_dim) * width ** -0.5)
        mask = torch.empty(context_length, context_length).fill_(float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, text):
        x = self.token_embedding(text)
        x = x + self.positional_embedding
        x = x.permute(1, 0, 2)
        for r in self.transformer.resblocks:
            x = r(x, attn_mask=self.attn_mask)
        x = x.permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


def _eva_clip_text(seed: int) -> _EvaClipTextTransformer:
    torch.manual_seed(seed)
    ref = _EvaClipTextTransformer(TINY_TEXT_CFG["context_length"], TINY_TEXT_CFG["vocab_size"], WIDTH, HEADS,
                                  LAYERS, TINY_EMBED_DIM)
    _jitter_(ref, seed + 1)  # norm weights != 1, biases != 0
    return ref.eval()


# -------------------------------------------------------------------------------------------------------------------
def test_wtext_file_puts_every_tensor_where_it_belongs(tmp_path):
    src = _eva02(0)
    psm_src = LinearPSM(num_templates=1, width=8)
    _jitter_(psm_src, 7)
    ref_text = _eva_clip_text(11)
    fake = _wtext_file(src, psm_src, ref_text.state_dict())
    assert "text_encoder.proxy.transformer.resblocks.1.attn.in_proj_weight" in fake
    torch.save({"model": fake}, tmp_path / "wtext.pth")

    dst = _eva02(1)
    psm_dst = LinearPSM(num_templates=1, width=8)
    ids = dst.tokenize(TEXTS)
    with torch.no_grad():
        before = dst.encode_text(ids)
    fingerprint_before = dst.text_fingerprint()
    load_maskclippp_checkpoint(dst, psm_dst, tmp_path / "wtext.pth")

    text_state = dst.model.text.state_dict()
    for key, value in ref_text.state_dict().items():  # every text tensor, tuned or frozen, from the file
        assert torch.equal(text_state[key], value), key
    assert float(dst.model.logit_scale) == pytest.approx(math.log(1 / 0.05))
    for key, value in src.model.visual.state_dict().items():
        assert torch.equal(dst.model.visual.state_dict()[key], value), key
    assert torch.equal(dst.mask_logit_scale, src.mask_logit_scale)
    for key, value in psm_src.state_dict().items():
        assert torch.equal(psm_dst.state_dict()[key], value), key

    with torch.no_grad():  # EVA-CLIP's text forward on its own weights = ours after the key map
        after, reference = dst.encode_text(ids), ref_text(ids)
    assert (after - reference).abs().max() < 1e-5
    assert (after - before).abs().max() > 1e-2  # the load changed the embeddings ...
    assert dst.text_fingerprint() != fingerprint_before  # ... and the text-cache key with them


def test_tuned_text_tower_never_reuses_a_stale_text_cache(tmp_path):
    clf = _eva02(0)
    psm = LinearPSM(num_templates=1, width=8)
    torch.save({"model": _wtext_file(clf, psm, _eva_clip_text(11).state_dict())}, tmp_path / "wtext.pth")
    vocabulary = Vocabulary.from_strings(["cat", "traffic light", "stuff:sky"])

    def embed(cache_dir):
        cache = TextEmbeddingCache(lambda s: clf.encode_text(clf.tokenize(s)), clf.text_fingerprint(),
                                   cache_dir=cache_dir)
        with torch.no_grad():
            return cache.embed(vocabulary, "t1").text_embeddings, cache

    stale, _ = embed(tmp_path / "text_cache")  # written to disk under the base text tower's fingerprint
    load_maskclippp_checkpoint(clf, psm, tmp_path / "wtext.pth")
    fresh, cache = embed(tmp_path / "text_cache")
    uncached, _ = embed(None)
    assert cache.stats["disk_hits"] == 0 and cache.stats["sentences_encoded"] == 3
    assert torch.equal(fresh, uncached)
    assert (fresh - stale).abs().max() > 1e-2
    assert len(list((tmp_path / "text_cache").iterdir())) == 2  # one directory per text-tower fingerprint


def test_text_key_map_names_unknown_and_missing_keys(tmp_path):
    clf = _eva02(0)
    psm = LinearPSM(num_templates=1, width=8)
    text_sd = _eva_clip_text(11).state_dict()
    good = _wtext_file(clf, psm, text_sd)

    unknown = dict(good)
    unknown["text_encoder.proxy.transformer.resblocks.0.attn.head_scale"] = torch.ones(HEADS, 1, 1)
    unknown["text_encoder.prompt_learner.ctx"] = torch.zeros(4, WIDTH)
    with pytest.raises(KeyError, match=r"head_scale.*prompt_learner\.ctx|prompt_learner\.ctx.*head_scale"):
        split_maskclippp_text_state_dict(unknown)
    torch.save({"model": unknown}, tmp_path / "unknown.pth")
    with pytest.raises(KeyError, match="head_scale"):
        load_maskclippp_checkpoint(clf, psm, tmp_path / "unknown.pth")

    tuned_missing = {k: v for k, v in good.items() if k != "text_encoder.proxy.transformer.resblocks.1.mlp.c_fc.weight"}
    torch.save({"model": tuned_missing}, tmp_path / "tuned_missing.pth")
    with pytest.raises(KeyError, match=r"missing from the file \['transformer\.resblocks\.1\.mlp\.c_fc\.weight'\]"):
        load_maskclippp_checkpoint(clf, psm, tmp_path / "tuned_missing.pth")

    wrong_shape = dict(good)
    wrong_shape["text_encoder.proxy.text_projection"] = torch.zeros(WIDTH, TINY_EMBED_DIM + 1)
    torch.save({"model": wrong_shape}, tmp_path / "wrong_shape.pth")
    with pytest.raises(ValueError, match="text_projection"):
        load_maskclippp_checkpoint(clf, psm, tmp_path / "wrong_shape.pth")

    # A frozen tensor (not tuned by MaskCLIP++) may be absent: the base CLIP's stays.
    base_embedding = clf.model.text.token_embedding.weight.detach().clone()
    frozen_missing = {k: v for k, v in good.items() if k != "text_encoder.proxy.token_embedding.weight"}
    torch.save({"model": frozen_missing}, tmp_path / "frozen_missing.pth")
    load_maskclippp_checkpoint(clf, psm, tmp_path / "frozen_missing.pth")
    assert torch.equal(clf.model.text.token_embedding.weight, base_embedding)
    assert torch.equal(clf.model.text.ln_final.weight, text_sd["ln_final.weight"])


# --- EVA01-g: fused qkv with q_bias / v_bias, plain MLP, no RoPE ----------------------------------------------------
def _eva01(seed: int) -> ClipClassifier:
    """What open_clip's EVA01-g-14-plus builds (TimmModel around timm `eva_giant_patch14_224`), narrower."""
    from open_clip.model import CustomTextCLIP
    from open_clip.timm_model import TimmModel

    torch.manual_seed(seed)
    model = CustomTextCLIP(embed_dim=TINY_EMBED_DIM, text_cfg=TINY_TEXT_CFG,
                           vision_cfg=dict(image_size=TINY_NATIVE_SIZE, layers=1, width=32, patch_size=16,
                                           head_width=16))
    trunk = timm.create_model("eva_giant_patch14_224", pretrained=False, img_size=TINY_NATIVE_SIZE, patch_size=16,
                              depth=4, embed_dim=64, num_heads=4, num_classes=TINY_EMBED_DIM, global_pool="token")
    visual = TimmModel.__new__(TimmModel)
    nn.Module.__init__(visual)
    visual.image_size = (TINY_NATIVE_SIZE, TINY_NATIVE_SIZE)
    visual.trunk, visual.head = trunk, nn.Sequential()
    model.visual = visual
    clf = ClipClassifier.from_open_clip(model, ClipClassifierConfig(model_name="tiny-eva01"))
    _jitter_(clf, seed + 100)
    return clf.eval()


def _eva_clip_eva01_block(sd, prefix, x, num_heads):
    """eva_vit_model.py `Block.forward` (no gamma, no postnorm) with `Attention` (subln off) and `Mlp` (subln off)."""
    def p(name):
        return sd[prefix + name]

    B, N, C = x.shape
    h = F.layer_norm(x, (C,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
    qkv_bias = torch.cat((p("attn.q_bias"), torch.zeros_like(p("attn.v_bias")), p("attn.v_bias")))
    qkv = F.linear(h, p("attn.qkv.weight"), qkv_bias).reshape(B, N, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q * (C // num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(B, N, -1)
    x = x + F.linear(o, p("attn.proj.weight"), p("attn.proj.bias"))
    h = F.layer_norm(x, (C,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
    return x + F.linear(F.gelu(F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"),
                        p("mlp.fc2.bias"))


def test_eva01_file_loads_through_its_own_rules(tmp_path):
    src = _eva01(0)
    assert src.family == "eva" and src.model.visual.trunk.rope is None
    psm = LinearPSM(num_templates=14, width=8)
    # EVA-CLIP's EVA01 visual names are timm's: the released layout is ours without "trunk."
    fake = {"visual_encoder.proxy." + k[len("trunk."):]: v.clone() for k, v in src.model.visual.state_dict().items()}
    assert {"visual_encoder.proxy.blocks.0.attn.qkv.weight", "visual_encoder.proxy.blocks.0.mlp.fc1.bias"} <= set(fake)
    fake["visual_encoder.mask_logit_scale"] = torch.linspace(-1, 1, 12).view(3, 4)
    fake.update({"psm." + k: v.clone() for k, v in psm.state_dict().items()})
    torch.save({"model": fake}, tmp_path / "eva01.pth")

    dst = _eva01(1)
    load_maskclippp_checkpoint(dst, LinearPSM(num_templates=14, width=8), tmp_path / "eva01.pth")
    for key, value in src.model.visual.state_dict().items():
        assert torch.equal(dst.model.visual.state_dict()[key], value), key
    assert torch.equal(dst.mask_logit_scale, fake["visual_encoder.mask_logit_scale"])

    # EVA-CLIP's EVA01 block on the file's tensors = timm's block after the key map.
    x = torch.randn(2, 17, 64, generator=torch.Generator().manual_seed(3))
    sd = {k[len("visual_encoder.proxy."):]: v for k, v in fake.items() if k.startswith("visual_encoder.proxy.")}
    with torch.no_grad():
        for i, block in enumerate(dst.model.visual.trunk.blocks):
            assert (block(x) - _eva_clip_eva01_block(sd, f"blocks.{i}.", x, 4)).abs().max() < 1e-5
        px = torch.randn(1, 3, 80, 64, generator=torch.Generator().manual_seed(4))
        masks = torch.rand(1, 3, 80, 64, generator=torch.Generator().manual_seed(5))
        src.mask_logit_scale.data.copy_(fake["visual_encoder.mask_logit_scale"])
        assert torch.equal(dst.encode_masks(px, masks).mask_embeddings, src.encode_masks(px, masks).mask_embeddings)

    eva02 = _eva02(0)
    with pytest.raises(ValueError, match="EVA01 checkpoint, but the classifier is an EVA02 CLIP"):
        load_maskclippp_checkpoint(eva02, LinearPSM(num_templates=14, width=8), tmp_path / "eva01.pth")
    torch.save({"model": _wtext_file(eva02, LinearPSM(num_templates=1, width=8), eva02.model.text.state_dict())},
               tmp_path / "eva02.pth")
    with pytest.raises(ValueError, match="EVA02 checkpoint, but the classifier is an EVA01 CLIP"):
        load_maskclippp_checkpoint(dst, LinearPSM(num_templates=1, width=8), tmp_path / "eva02.pth")
    mixed = dict(fake)
    mixed["visual_encoder.proxy.blocks.0.mlp.w3.weight"] = torch.zeros(1)  # an EVA02 name in an EVA01 file
    torch.save({"model": mixed}, tmp_path / "mixed.pth")
    with pytest.raises(KeyError, match=r"blocks\.0\.mlp\.w3\.weight"):
        load_maskclippp_checkpoint(dst, LinearPSM(num_templates=14, width=8), tmp_path / "mixed.pth")


def test_text_tower_of_a_clip_without_a_text_submodule_loads_at_the_top_level(tmp_path):
    """open_clip's `CLIP` (OpenAI-style ViTs) keeps the text names on the model itself, not under `text.`."""
    from ovs_ros.models.clip import build_tiny_classifier, load_maskclippp_text_tower

    clf = build_tiny_classifier("vit")
    assert not hasattr(clf.model, "text")
    text_sd = _eva_clip_text(11).state_dict()
    load_maskclippp_text_tower(clf.model, text_sd, None, tmp_path / "x.pth")
    for key, value in text_sd.items():
        assert torch.equal(clf.model.state_dict()[key], value), key
