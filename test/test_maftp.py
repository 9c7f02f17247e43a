"""MAFT+ port (jiaosiyu1999/MAFT-Plus @fd12806) against literal re-statements of MAFT+'s functions, on random
weights: the Content-Dependent Transfer (both residual forms), the dense CLIP embeddings it attends to (MAFT+'s
reshape, not a per-pixel permute), the batched classification logits, the class probabilities (no ensemble, void
from the decoder), and the released-checkpoint key map in both directions. CPU, fp32, tiny models."""
from __future__ import annotations

import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovs_ros.models.fcclip import fcclip_ensemble_probs
from ovs_ros.models.maftp import (
    ContentDependentTransfer,
    MAFTPlusConfig,
    MAFTPlusGenerator,
    convert_maftp_state_dict,
    dense_clip_embeddings,
    load_maftp_checkpoint,
    maftp_class_probs,
    to_released_state_dict,
)
from ovs_ros.models.maftp.factory import VARIANTS, maftp_config

ATOL = 1e-5


# ------------------------------------------------------------------------------------------------------------------
# Literal re-statements of MAFT+'s code (maft/modeling/maft/content_dependent_transfer.py,
# maft/modeling/transformer_decoder/position_encoding.py, maft/modeling/transformer_decoder/
# fcclip_transformer_decoder.py `get_classification_logits`, maft/maft_plus.py), used only as oracles.

class RefPositionEmbeddingSine(nn.Module):
    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        if scale is None:
            scale = 2 * math.pi
        self.scale = scale

    def forward(self, x, mask=None):
        if mask is None:
            mask = torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class RefShortCutCrossAttention(nn.Module):
    def __init__(self, d_model, nhead, panoptic_on=False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        self.MLP = nn.Linear(d_model, d_model)
        self.panoptic_on = panoptic_on

    def with_pos_embed(self, tensor, pos: Optional[Tensor]):
        return tensor if pos is None else tensor + pos

    def forward(self, tgt, memory, memory_mask=None, memory_key_padding_mask=None, pos=None, query_pos=None):
        tgt2 = self.multihead_attn(query=self.with_pos_embed(tgt, query_pos), key=self.with_pos_embed(memory, pos),
                                   value=memory, attn_mask=memory_mask,
                                   key_padding_mask=memory_key_padding_mask)[0]
        if self.panoptic_on:
            tgt = tgt + self.norm(self.MLP(tgt2))
        else:
            tgt = self.norm(tgt + self.MLP(tgt2))
        return tgt


class RefContentDependentTransfer(nn.Module):
    def __init__(self, d_model, nhead, panoptic_on):
        super().__init__()
        self.pe_layer = RefPositionEmbeddingSine(d_model // 2, normalize=True)
        self.cross_atten = RefShortCutCrossAttention(d_model=d_model, nhead=nhead, panoptic_on=panoptic_on)

    def forward(self, img_feat, text_classifier):
        text_classifier = text_classifier.unsqueeze(0).repeat(img_feat.shape[0], 1, 1)
        pos = self.pe_layer(img_feat, None).flatten(2).permute(2, 0, 1)
        img_feat = img_feat.flatten(2).permute(2, 0, 1)
        bias = self.cross_atten(text_classifier.permute(1, 0, 2), img_feat, memory_mask=None,
                                memory_key_padding_mask=None, pos=pos, query_pos=None)
        return bias.permute(1, 0, 2)


def ref_visual_prediction_forward_convnext(clip_model, x):
    batch, channel, h, w = x.shape
    x = x.reshape(batch * h * w, channel).unsqueeze(-1).unsqueeze(-1)
    x = clip_model.visual.trunk.head(x)
    x = clip_model.visual.head(x)
    return x.reshape(batch, h, w, x.shape[-1]).permute(0, 3, 1, 2)


def ref_get_classification_logits(x, text_classifier, logit_scale, num_templates):
    x = F.normalize(x, dim=-1)
    logit_scale = torch.clamp(logit_scale.exp(), max=100)
    if len(text_classifier.shape) == 2:
        pred_logits = logit_scale * x @ text_classifier.T
    else:
        pred_logits = logit_scale * x @ text_classifier.permute(0, 2, 1)
    final_pred_logits = []
    cur_idx = 0
    for num_t in num_templates:
        final_pred_logits.append(pred_logits[:, :, cur_idx: cur_idx + num_t].max(-1).values)
        cur_idx += num_t
    final_pred_logits.append(pred_logits[:, :, -1])
    return torch.stack(final_pred_logits, dim=-1)


def ref_maftp_probs(mask_cls_results, out_vocab_cls_results):
    """maft_plus.py:380-393, then the softmax its panoptic / semantic inference takes."""
    cls_results = out_vocab_cls_results[..., :-1]
    is_void_prob = F.softmax(mask_cls_results, dim=-1)[..., -1:]
    mask_cls_probs = torch.cat([cls_results.softmax(-1) * (1.0 - is_void_prob), is_void_prob], dim=-1)
    mask_cls_results = torch.log(mask_cls_probs + 1e-8)
    return F.softmax(mask_cls_results, dim=-1)


# ------------------------------------------------------------------------------------------------------------------

def randomise(module: nn.Module, seed: int) -> None:
    """Every tensor random (the panoptic MLP's zero init and LayerNorm's ones / zeros would hide terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def cdt_pair(panoptic: bool, d: int = 64, heads: int = 8, seed: int = 0):
    ours = ContentDependentTransfer(d, heads, panoptic=panoptic).eval()
    randomise(ours, seed)
    ref = RefContentDependentTransfer(d, heads, panoptic).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)  # MAFT+'s parameter names, one to one
    return ours, ref


def text_rows(s: int, d: int, seed: int) -> Tensor:
    return F.normalize(torch.randn(s, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("panoptic", [True, False])
def test_cdt_matches_maftp_reference(panoptic):
    ours, ref = cdt_pair(panoptic)
    img = torch.randn(2, 64, 3, 5, generator=torch.Generator().manual_seed(1))  # non-square, batch 2
    text = text_rows(10, 64, 2)  # 9 synonym rows + void
    with torch.no_grad():
        got, want = ours(img, text), ref(img, text)
    assert got.shape == (2, 10, 64)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # image-dependent


def test_cdt_residual_forms_differ_and_panoptic_starts_as_identity():
    pan, _ = cdt_pair(True)
    sem = ContentDependentTransfer(64, 8, panoptic=False).eval()
    sem.load_state_dict(pan.state_dict())
    img, text = torch.randn(1, 64, 4, 4), text_rows(6, 64, 3)
    with torch.no_grad():
        assert (pan(img, text) - sem(img, text)).abs().max() > 1e-2
        fresh = ContentDependentTransfer(64, 8, panoptic=True).eval()  # W, b zero: t + LN(0) = t
        assert torch.count_nonzero(fresh.cross_atten.MLP.weight) == 0
        torch.testing.assert_close(fresh(img, text)[0], text, atol=0, rtol=0)
        assert ContentDependentTransfer(64, 8, panoptic=False).cross_atten.MLP.weight.abs().sum() > 0


def test_cdt_position_encoding_is_maftp_sine():
    """A wrong position encoding (or none) changes the keys only: check it moves the output and matches MAFT+'s."""
    ours, ref = cdt_pair(True, seed=4)
    img = torch.randn(1, 64, 4, 6)
    pe = RefPositionEmbeddingSine(32, normalize=True)(img)
    with torch.no_grad():
        text = text_rows(5, 64, 5)
        no_pe = ref.cross_atten(text[:, None], img.flatten(2).permute(2, 0, 1), pos=None).permute(1, 0, 2)
        with_pe = ref.cross_atten(text[:, None], img.flatten(2).permute(2, 0, 1),
                                  pos=pe.flatten(2).permute(2, 0, 1)).permute(1, 0, 2)
        torch.testing.assert_close(ours(img, text), with_pe, atol=ATOL, rtol=0)
        assert (ours(img, text) - no_pe).abs().max() > 1e-3


def test_cdt_refuses_bad_shapes():
    cdt = ContentDependentTransfer(64, 8)
    with pytest.raises(ValueError, match="64-d"):
        cdt(torch.randn(1, 32, 2, 2), text_rows(3, 32, 0))
    with pytest.raises(ValueError, match="even"):
        ContentDependentTransfer(63, 7)
    with pytest.raises(ValueError, match="divisible"):
        ContentDependentTransfer(64, 6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    gen = MAFTPlusGenerator(MAFTPlusConfig.tiny()).eval()
    randomise(gen.cdt, 7)
    return gen


def test_dense_embeddings_are_maftp_reshape_not_a_permute(model):
    dense = torch.randn(1, model.backbone.stage_channels[-1], 3, 4, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        got = dense_clip_embeddings(model.backbone, dense)
        want = ref_visual_prediction_forward_convnext(model.backbone.clip, dense)
        per_pixel = model.backbone.project_pooled(dense.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(got.shape)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert (got - per_pixel).abs().max() > 1e-3  # MAFT+'s reshape mixes channels and positions


def test_generator_pipeline_equals_maftp_inference(model):
    """The generator's outputs, the transferred classifier, the batched logits and the class probabilities against
    MAFT+'s inference written out from the same parts (two images, synonyms 2 + 1 + 3)."""
    pixels = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(9))
    num_templates = [2, 1, 3]
    index = torch.tensor([0, 0, 1, 2, 2, 2])
    text = model.text_classifier(text_rows(6, model.embed_dim, 10))  # [S + 1, D], void last
    with torch.no_grad():
        out = model(pixels)
        features = model.backbone(pixels)
        img_feat = ref_visual_prediction_forward_convnext(model.backbone.clip, features.clip_dense)
        torch.testing.assert_close(out.clip_dense_embeddings, img_feat, atol=ATOL, rtol=0)
        ref_cdt = RefContentDependentTransfer(64, 8, True).eval()
        ref_cdt.load_state_dict(model.cdt.state_dict())
        ref_text = ref_cdt(img_feat, text)
        transferred = model.transferred_text_classifier(out.clip_dense_embeddings, text)
        torch.testing.assert_close(transferred, ref_text, atol=ATOL, rtol=0)
        ref_out = ref_get_classification_logits(out.clip_mask_embeddings, ref_text, model.backbone.clip.logit_scale,
                                                num_templates)
        got_out = model.out_of_vocabulary_logits(out.clip_mask_embeddings, transferred, index, 3)
        torch.testing.assert_close(got_out, ref_out, atol=ATOL, rtol=0)
        ref_in = ref_get_classification_logits(out.class_embeddings, text,
                                               model.transformer_decoder.logit_scale, num_templates)
        got_in = model.in_vocabulary_logits(out.class_embeddings, text, index, 3)
        torch.testing.assert_close(got_in, ref_in, atol=ATOL, rtol=0)
        torch.testing.assert_close(maftp_class_probs(got_in, got_out), ref_maftp_probs(ref_in, ref_out), atol=1e-6,
                                   rtol=0)
        untransferred = model.out_of_vocabulary_logits(out.clip_mask_embeddings, text, index, 3)
        assert (untransferred - got_out).abs().max() > 1e-3  # the CDT changes the logits


def test_class_probs_are_clip_only_with_the_decoders_void():
    g = torch.Generator().manual_seed(11)
    in_logits, out_logits = torch.randn(5, 4, generator=g) * 3, torch.randn(5, 4, generator=g) * 3
    probs = maftp_class_probs(in_logits, out_logits)
    torch.testing.assert_close(probs, ref_maftp_probs(in_logits, out_logits), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    seen = torch.tensor([True, False, True])
    torch.testing.assert_close(probs, fcclip_ensemble_probs(in_logits, out_logits, seen, 1.0, 1.0), atol=1e-6,
                               rtol=0)
    assert (probs - fcclip_ensemble_probs(in_logits, out_logits, seen, 0.4, 0.8)).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------------------------------
# Key map.

MAFTP_CDT_KEYS = {  # MAFT_Plus.cdt (ContentDependentTransfer -> ShortCut_CrossAttention) state-dict names
    "cdt.cross_atten.multihead_attn.in_proj_weight", "cdt.cross_atten.multihead_attn.in_proj_bias",
    "cdt.cross_atten.multihead_attn.out_proj.weight", "cdt.cross_atten.multihead_attn.out_proj.bias",
    "cdt.cross_atten.norm.weight", "cdt.cross_atten.norm.bias", "cdt.cross_atten.MLP.weight",
    "cdt.cross_atten.MLP.bias",
}


def released_layout(model: MAFTPlusGenerator) -> dict:
    """A state dict with MAFT_Plus's key names: FC-CLIP's, the CDT, the teacher copy and the criterion weight."""
    sd = to_released_state_dict(model, empty_weight=torch.ones(len(model.config.class_synonyms) + 1), teacher=True)
    assert MAFTP_CDT_KEYS <= set(sd)
    assert any(k.startswith("backbone_t.clip_model.visual.trunk.stem") for k in sd)
    assert {k.split(".")[0] for k in sd} == {"backbone", "backbone_t", "sem_seg_head", "void_embedding", "cdt",
                                             "criterion"}
    return sd


def test_key_map_complete_both_directions(model, tmp_path):
    sd = released_layout(model)
    converted = convert_maftp_state_dict({"model": sd, "iteration": 1}, model)
    assert set(converted) == set(model.state_dict())
    path = tmp_path / "maftp_tiny.pth"
    torch.save({"model": sd}, path)
    torch.manual_seed(123)  # another random init: everything must come from the file
    loaded = load_maftp_checkpoint(path, MAFTPlusConfig.tiny())
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    back = {k: v for k, v in sd.items() if not k.startswith("backbone_t.") and k != "criterion.empty_weight"}
    assert set(to_released_state_dict(loaded)) == set(back)


def test_key_map_names_every_unmatched_key(model):
    sd = released_layout(model)
    sd["cdt.cross_atten.extra.weight"] = torch.zeros(1)
    del sd["cdt.cross_atten.MLP.bias"]
    sd["cdt.cross_atten.norm.weight"] = torch.zeros(3)
    del sd["sem_seg_head.predictor.query_feat.weight"]
    with pytest.raises(ValueError) as err:
        convert_maftp_state_dict(sd, model)
    text = str(err.value)
    for key in ("cdt.cross_atten.extra.weight", "cdt.cross_atten.MLP.bias", "cdt.cross_atten.norm.weight",
                "sem_seg_head.predictor.query_feat.weight"):
        assert key in text, key
    assert "1 unused" in text and "2 missing" in text and "1 misshaped" in text


def test_an_fcclip_file_is_not_a_maftp_file(model):
    sd = {k: v for k, v in released_layout(model).items() if not k.startswith("cdt.")}
    with pytest.raises(ValueError, match="8 missing key"):
        convert_maftp_state_dict(sd, model)


def test_projection_head_kind_is_checked(model):
    sd = released_layout(model)
    sd["backbone.clip_model.visual.head.proj.weight"] = torch.zeros(64, 256)
    with pytest.raises(ValueError, match="convnext_base_w_320"):
        convert_maftp_state_dict(sd, model)


def test_released_variants_are_maftp_configs():
    b, l_sem, l_pan = (maftp_config(v, "ignored") for v in
                       ("convnext_base_w_320", "convnext_large_d_320", "convnext_large_d_320_pan"))
    assert (b.cdt_dim, b.cdt_heads, b.cdt_panoptic, b.training_vocabulary) == (640, 8, False, "coco_stuff_171")
    assert (l_sem.cdt_dim, l_sem.cdt_panoptic, l_sem.training_vocabulary) == (768, False, "coco_stuff_171")
    assert (l_pan.cdt_dim, l_pan.cdt_panoptic, l_pan.training_vocabulary) == (768, True, "coco_panoptic")
    for cfg in (b, l_sem, l_pan):
        assert (cfg.num_queries, cfg.object_mask_threshold, cfg.overlap_threshold) == (100, 0.2, 0.7)
        assert (cfg.hidden_dim, cfg.decoder_layers, cfg.encoder_layers) == (256, 9, 6)
    assert len(l_pan.class_synonyms) == 133 and len(b.class_synonyms) == 171
    assert b.clip_model_name == "convnext_base_w_320" and l_pan.clip_model_name == "convnext_large_d_320"
    assert "tiny" in VARIANTS
    with pytest.raises(ValueError, match="unknown MAFT\\+ variant"):
        maftp_config("huge", "coco_panoptic")


def test_the_fcclip_half_is_fcclip(model):
    """MAFT+'s masks, decoder embeddings and mask-pooled CLIP embeddings are FC-CLIP's on the same weights."""
    from ovs_ros.models.fcclip import FCCLIPConfig, FCCLIPGenerator

    fcclip = FCCLIPGenerator(FCCLIPConfig.tiny()).eval()
    fcclip.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("cdt.")}, strict=True)
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        a, b = model(pixels), fcclip(pixels)
    for name in ("mask_logits", "class_embeddings", "clip_mask_embeddings"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_cdt_stays_fp32_when_the_generator_runs_in_half_precision():
    from ovs_ros.model_factory import keep_fp32_islands

    torch.manual_seed(0)
    gen = keep_fp32_islands(MAFTPlusGenerator(MAFTPlusConfig.tiny()).to(torch.bfloat16)).eval()
    assert gen.cdt.cross_atten.norm.weight.dtype == torch.float32
    with torch.no_grad():
        out = gen(torch.randn(1, 3, 64, 64).to(torch.bfloat16))
        text = gen.text_classifier(text_rows(4, 64, 13))
        transferred = gen.transferred_text_classifier(out.clip_dense_embeddings, text)
    assert transferred.dtype == torch.float32 and torch.isfinite(transferred).all()


def test_cards_name_the_released_files():
    from ovs_ros.models.cards import ModelCard
    from ovs_ros.paths import share_dir
    from ovs_ros.weights import cards_for

    pan = ModelCard.from_yaml(share_dir() / "models" / "maftp_l_pan_coco_panoptic.yaml")
    b = ModelCard.from_yaml(share_dir() / "models" / "maftp_b_coco_stuff.yaml")
    assert (pan.architecture, pan.filename, pan.google_drive_id) == (
        "maftp/convnext_large_d_320_pan", "maftp_l_pano.pth", "1znk_uco8fwvbA0kndy4kGyVp22KbQr6g")
    assert (b.architecture, b.filename, b.google_drive_id) == (
        "maftp/convnext_base_w_320", "maftp_b.pth", "1BeEeKOnWWIWIH-QWK_zLhAPUzCOnHuFG")
    for card in (pan, b):
        assert (card.object_mask_threshold, card.overlap_threshold) == (0.2, 0.7)
        assert card.input_short_side == 800 and card.loadable
    assert pan.published["ade150_pq"] == 27.1 and b.published["ade150_miou"] == 34.6
    large = ModelCard.from_yaml(share_dir() / "models" / "maftp_l_coco_stuff.yaml")
    assert (large.architecture, large.filename, large.google_drive_id) == (
        "maftp/convnext_large_d_320", "maftp_l.pth", "1EQo5guVuKkSSZj4bv0FQN_4X9h_Rwfe5")
    names = {c.name for c in cards_for("eva02_l14_336_wtext_maftl_pan")}
    assert names == {"maftp_l_pan_coco_panoptic", "maskclippp_eva02_l14_336_wtext_coco_stuff"}
