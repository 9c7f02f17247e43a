"""FC-CLIP port against the reference fixture `fcclip_tiny_ref.pt` (a tiny random FC-CLIP run by FC-CLIP's own code,
bytedance/fc-clip @2b0bbe2): the released-layout state dict loads through our key map, and every stage is reproduced
on the fixture's input. Tolerance: max |ours - reference| <= REL_TOL * max |reference| per tensor (fp32, CPU); the
measured worst case is about 1.2e-6 (mask logits after 3 decoder rounds).

The fixture lives outside the repository (`../shared/data/fixtures/`, or $OVS_FCCLIP_FIXTURE); without it the
fixture tests skip, the oracle tests below still run.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovs_ros.models.fcclip import (
    FCCLIPConfig,
    FCCLIPGenerator,
    classification_logits,
    convert_fcclip_state_dict,
    fcclip_ensemble_probs,
    load_fcclip_checkpoint,
    mask_pool,
    synonym_text_classifier,
    to_released_state_dict,
)
from ovs_ros.models.fcclip.convert import DROPPED, released_key_to_ours
from ovs_ros.postprocess import panoptic_merge, semantic_probs

REL_TOL = 1e-5
FIXTURE = Path(os.environ.get(
    "OVS_FCCLIP_FIXTURE", Path(__file__).resolve().parents[2] / "shared" / "data" / "fixtures" / "fcclip_tiny_ref.pt"))

needs_fixture = pytest.mark.skipif(not FIXTURE.is_file(), reason=f"FC-CLIP reference fixture not found at {FIXTURE}")


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, rel: float = REL_TOL) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.double() - ref.double()).abs().max().item()
    scale = max(ref.double().abs().max().item(), 1e-12)
    assert err <= rel * scale, f"{name}: max abs diff {err:.3e} > {rel:.0e} x {scale:.3e}"


def split_labels(names: str) -> list[str]:  # FC-CLIP `split_labels`
    return names.replace(", ", ",").split(",")


# ----------------------------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def model(ref):
    train = [split_labels(c) for c in ref["vocabulary"]["train_classes"]]
    config = FCCLIPConfig.tiny(class_synonyms=train, num_queries=ref["settings"]["num_queries"])
    m = FCCLIPGenerator(config).eval()
    m.load_state_dict(convert_fcclip_state_dict(ref["checkpoint"], m), strict=True)
    return m


@pytest.fixture(scope="module")
def run(ref, model):
    """Our forward on the fixture's padded input, plus the vocabulary side."""
    voc = ref["vocabulary"]
    with torch.no_grad():
        x = ref["inputs"]["images_tensor"]
        features, pixels = model.forward_features(x)
        out = model(x)
        tokens = model.backbone.tokenize(voc["templated_prompts"])
        raw = model.backbone.encode_text(tokens)
        num_templates = len(voc["templates"])
        classifier = synonym_text_classifier(raw.view(-1, num_templates, raw.shape[-1]))
        with_void = model.text_classifier(classifier)
        synonym_class = torch.tensor([k for k, n in enumerate(voc["num_templates"]) for _ in range(n)])
        k = len(voc["num_templates"])
        in_logits = model.in_vocabulary_logits(out.class_embeddings, with_void, synonym_class, k)
        out_logits = model.out_of_vocabulary_logits(out.clip_mask_embeddings, with_void, synonym_class, k)
        seen = voc["category_overlapping_mask"].bool()
        probs = fcclip_ensemble_probs(in_logits, out_logits, seen, model.config.geometric_ensemble_alpha,
                                      model.config.geometric_ensemble_beta)
    return dict(features=features, pixels=pixels, out=out, tokens=tokens, raw=raw, classifier=classifier,
                with_void=with_void, in_logits=in_logits, out_logits=out_logits, probs=probs, seen=seen)


@needs_fixture
def test_key_map_complete_both_directions(ref, model):
    released = ref["checkpoint"]["model"]
    ours = model.state_dict()
    mapped = {released_key_to_ours(k) for k in released if k not in DROPPED}
    assert mapped == set(ours), (sorted(mapped ^ set(ours)))[:10]
    assert len(mapped) == len(released) - len(DROPPED)
    back = to_released_state_dict(model, empty_weight=released["criterion.empty_weight"])
    assert set(back) == set(released)
    for key, value in released.items():
        assert torch.equal(back[key], value), key


@needs_fixture
def test_key_map_names_every_unmatched_key(ref, model):
    released = dict(ref["checkpoint"]["model"])
    bad = dict(released)
    bad["sem_seg_head.predictor.class_embed.layers.3.weight"] = torch.zeros(1)
    bad["some_head.extra"] = torch.zeros(1)
    del bad["sem_seg_head.predictor.logit_scale"]
    del bad["void_embedding.weight"]
    bad["sem_seg_head.predictor.query_feat.weight"] = torch.zeros(3, 32)
    with pytest.raises(ValueError) as info:
        convert_fcclip_state_dict({"model": bad}, model)
    message = str(info.value)
    for key in ("sem_seg_head.predictor.class_embed.layers.3.weight", "some_head.extra",
                "sem_seg_head.predictor.logit_scale", "void_embedding.weight",
                "sem_seg_head.predictor.query_feat.weight: file (3, 32)"):
        assert key in message, key
    assert "2 unused" in message and "2 missing" in message and "1 misshaped" in message


@needs_fixture
def test_projection_head_kind_is_checked(ref, model):
    # convnext_base_w_320 has `visual.head.proj` where the fixture (like convnext_large_d_320) has `visual.head.mlp`.
    config = copy.deepcopy(model.config)
    config.open_clip_model_cfg["vision_cfg"]["timm_proj"] = "linear"
    linear = FCCLIPGenerator(config)
    assert linear.backbone.head_kind == "proj" and model.backbone.head_kind == "mlp"
    with pytest.raises(ValueError, match="visual.head.mlp but the configured CLIP"):
        convert_fcclip_state_dict(ref["checkpoint"], linear)
    # ... and a proj-head file loads into the proj-head model, exactly.
    state = to_released_state_dict(linear)
    assert "backbone.clip_model.visual.head.proj.weight" in state
    linear.load_state_dict(convert_fcclip_state_dict({"model": state}, linear), strict=True)


@needs_fixture
def test_loads_released_pth_file(ref, model, tmp_path):
    path = tmp_path / "fcclip_tiny.pth"
    torch.save({"model": ref["checkpoint"]["model"], "iteration": 7}, path)
    loaded = load_fcclip_checkpoint(path, model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@needs_fixture
def test_preprocessing_constants(ref, model):
    mean = torch.tensor(model.pixel_mean_01) * 255
    std = torch.tensor(model.pixel_std_01) * 255
    assert torch.allclose(mean, torch.tensor(ref["settings"]["pixel_mean"]), atol=1e-5)
    assert torch.allclose(std, torch.tensor(ref["settings"]["pixel_std"]), atol=1e-5)
    image = ref["inputs"]["image"].float()
    normalised = (image - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert_close("images_normalized", normalised, ref["inputs"]["images_normalized"])
    h, w = normalised.shape[-2:]
    padded = F.pad(normalised, (0, (-w) % 32, 0, (-h) % 32))
    assert_close("images_tensor", padded[None], ref["inputs"]["images_tensor"])


@needs_fixture
def test_backbone_stages_and_clip_dense(ref, run):
    feats = run["features"]
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        assert_close(name, feats.feature_maps[i], ref["outputs"]["backbone"][name])
    assert_close("clip_vis_dense", feats.clip_dense, ref["outputs"]["backbone"]["clip_vis_dense"])


@needs_fixture
def test_backbone_equals_open_clip_trunk(ref, model):
    x = ref["inputs"]["images_tensor"]
    trunk = model.backbone.clip.visual.trunk
    with torch.no_grad():
        ours = model.backbone(x)
        assert torch.equal(ours.clip_dense, trunk.forward_features(x))  # ConvNeXt CLIP trunks: head_norm_first False
        _, intermediates = trunk.forward_intermediates(x, indices=4)
    for a, b in zip(ours.feature_maps, intermediates):
        assert torch.equal(a, b)


@needs_fixture
def test_pixel_decoder(ref, run):
    pix = ref["outputs"]["pixel_decoder"]
    assert_close("mask_features", run["pixels"].mask_features, pix["mask_features"])
    for i, level in enumerate(run["pixels"].multi_scale_features):
        assert_close(f"multi_scale_features[{i}]", level, pix["multi_scale_features"][i])


@needs_fixture
def test_text_tower_and_classifier(ref, run):
    voc = ref["vocabulary"]
    assert torch.equal(run["tokens"], voc["text_tokens"])
    assert_close("text_features_raw", run["raw"], voc["text_features_raw"])
    assert_close("text_classifier", run["classifier"], voc["text_classifier"])
    assert_close("text_classifier_with_void", run["with_void"], voc["text_classifier_with_void"])


@needs_fixture
def test_predictor_masks_and_in_vocabulary_logits(ref, run):
    pred = ref["outputs"]["predictor"]
    assert_close("pred_masks", run["out"].mask_logits, pred["pred_masks"])
    assert_close("pred_logits", run["in_logits"], pred["pred_logits"])
    iv = ref["outputs"]["in_vocab"]
    assert_close("in_vocab.logits", run["in_logits"][..., :-1], iv["logits"])
    assert_close("in_vocab.probs", run["in_logits"][..., :-1].softmax(-1), iv["probs"])


@needs_fixture
def test_out_of_vocabulary_branch(ref, run):
    ov = ref["outputs"]["out_vocab"]
    assert_close("pooled_embedding", run["out"].clip_mask_embeddings, ov["pooled_embedding"])
    assert_close("logits_with_void", run["out_logits"], ov["logits_with_void"])
    assert_close("out_vocab.probs", run["out_logits"][..., :-1].softmax(-1), ov["probs"])


@needs_fixture
def test_ensemble(ref, run):
    ens = ref["outputs"]["ensemble"]
    assert torch.equal(run["seen"].long(), ens["category_overlapping_mask"])
    assert (ens["alpha"], ens["beta"]) == (0.4, 0.8)
    assert_close("is_void_prob", run["probs"][..., -1:], ens["is_void_prob"])
    assert_close("mask_cls_probs", run["probs"], ens["mask_cls_probs"])
    assert_close("mask_cls_results", torch.log(run["probs"] + 1e-8), ens["mask_cls_results"])


@needs_fixture
def test_seen_classes_from_the_generator_vocabulary(ref, model):
    from ovs_ros.vocabulary import Vocabulary, seen_classes

    test = Vocabulary.from_strings(ref["vocabulary"]["test_classes"])
    seen = seen_classes(test, model.config.class_synonyms)
    assert seen.tolist() == ref["vocabulary"]["category_overlapping_mask"].bool().tolist()


@needs_fixture
def test_semantic_and_panoptic_results(ref, run):
    post = ref["outputs"]["postprocess"]
    h, w = ref["inputs"]["image_sizes"][0]
    padded = F.interpolate(run["out"].mask_logits, size=ref["inputs"]["images_tensor"].shape[-2:], mode="bilinear",
                           align_corners=False)
    assert_close("mask_pred_results", padded, ref["outputs"]["masks"]["mask_pred_results"])
    mask_logits = padded[0, :, :h, :w]  # sem_seg_postprocess at the same output size: crop only
    assert_close("mask_pred_result", mask_logits, post["mask_pred_result"])
    # FC-CLIP's inference takes softmax(log(p + 1e-8)) of the ensemble probabilities
    class_probs = torch.log(run["probs"][0] + 1e-8).softmax(-1)
    assert_close("sem_seg", semantic_probs(mask_logits.sigmoid(), class_probs), post["sem_seg"])
    things = ref["vocabulary"]["thing_dataset_id_to_contiguous_id"].values()
    is_thing = torch.tensor([k in things for k in range(len(ref["vocabulary"]["test_classes"]))])
    merged = panoptic_merge(mask_logits.sigmoid(), class_probs, is_thing,
                            object_mask_threshold=ref["settings"]["object_mask_threshold"],
                            overlap_threshold=ref["settings"]["overlap_threshold"])
    assert torch.equal(merged.panoptic.to(torch.int32), post["panoptic_seg"])
    segments = [dict(id=i + 1, isthing=bool(merged.segment_is_thing[i]), category_id=int(merged.segment_class[i]))
                for i in range(len(merged.segment_class))]
    assert segments == post["segments_info"]


# ------------------------------------------------------------------------- oracles: literal FC-CLIP re-statements
def ref_get_classification_logits(x, text_classifier, logit_scale, num_templates):
    x = F.normalize(x, dim=-1)
    logit_scale = torch.clamp(logit_scale.exp(), max=100)
    pred_logits = logit_scale * x @ text_classifier.T
    final_pred_logits = []
    cur_idx = 0
    for num_t in num_templates:
        final_pred_logits.append(pred_logits[:, :, cur_idx: cur_idx + num_t].max(-1).values)
        cur_idx += num_t
    final_pred_logits.append(pred_logits[:, :, -1])
    return torch.stack(final_pred_logits, dim=-1)


def ref_mask_pooling(x, mask):
    if not x.shape[-2:] == mask.shape[-2:]:
        mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
    mask = (mask > 0).to(mask.dtype)
    denorm = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return torch.einsum("bchw,bqhw->bqc", x, mask / denorm)


def ref_ensemble(mask_cls_results, out_vocab_cls_results, category_overlapping_mask, alpha, beta):
    in_vocab_cls_results = mask_cls_results[..., :-1].softmax(-1)
    out_vocab_cls_probs = out_vocab_cls_results[..., :-1].softmax(-1)
    cls_logits_seen = ((in_vocab_cls_results ** (1 - alpha) * out_vocab_cls_probs ** alpha).log()
                       * category_overlapping_mask)
    cls_logits_unseen = ((in_vocab_cls_results ** (1 - beta) * out_vocab_cls_probs ** beta).log()
                         * (1 - category_overlapping_mask))
    cls_results = cls_logits_seen + cls_logits_unseen
    is_void_prob = F.softmax(mask_cls_results, dim=-1)[..., -1:]
    return torch.cat([cls_results.softmax(-1) * (1.0 - is_void_prob), is_void_prob], dim=-1)


@pytest.mark.parametrize("logit_scale", [2.0, 6.0])  # 6.0: exp > 100, the clamp bites
def test_classification_logits_match_reference_loop(logit_scale):
    g = torch.Generator().manual_seed(0)
    num_templates = [3, 1, 2, 4]
    x = torch.randn(2, 5, 8, generator=g)
    text = F.normalize(torch.randn(sum(num_templates) + 1, 8, generator=g), dim=-1)
    index = torch.tensor([k for k, n in enumerate(num_templates) for _ in range(n)])
    scale = torch.tensor(logit_scale)
    ours = classification_logits(x, text, scale, index, len(num_templates))
    assert torch.equal(ours, ref_get_classification_logits(x, text, scale, num_templates))


def test_mask_pool_matches_reference_and_binarises():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 5, 7, generator=g)
    masks = torch.randn(2, 4, 20, 28, generator=g)
    masks[:, 0] = -1.0  # an empty mask pools to zeros
    ours = mask_pool(x, masks)
    assert torch.allclose(ours, ref_mask_pooling(x, masks), atol=1e-6)
    assert torch.all(ours[:, 0] == 0)
    # the mask is binarised: scaling positive logits changes nothing
    assert torch.allclose(mask_pool(x, masks * 3.0), ours, atol=1e-6)


def test_ensemble_matches_reference_and_uses_alpha_on_seen_beta_on_unseen():
    g = torch.Generator().manual_seed(2)
    in_logits = torch.randn(1, 6, 5, generator=g) * 3
    out_logits = torch.randn(1, 6, 5, generator=g) * 3
    seen = torch.tensor([True, False, True, False])
    ours = fcclip_ensemble_probs(in_logits, out_logits, seen, 0.4, 0.8)
    assert torch.allclose(ours, ref_ensemble(in_logits, out_logits, seen.long(), 0.4, 0.8), atol=1e-7)
    assert torch.allclose(ours.sum(-1), torch.ones(1, 6))
    swapped = fcclip_ensemble_probs(in_logits, out_logits, seen, 0.8, 0.4)
    assert not torch.allclose(swapped, ours, atol=1e-4)


def test_ensemble_stays_finite_where_a_probability_underflows():
    in_logits = torch.tensor([[[0.0, 200.0, 0.0, 0.0]]])  # class 0 and 2 underflow to probability 0
    out_logits = torch.tensor([[[1.0, 0.0, 2.0, 0.0]]])
    seen = torch.tensor([True, False, True])
    ours = fcclip_ensemble_probs(in_logits, out_logits, seen, 0.4, 0.8)
    assert torch.isfinite(ours).all()
    assert torch.isnan(ref_ensemble(in_logits, out_logits, seen.long(), 0.4, 0.8)).any()  # the reference's NaN


def test_tiny_generator_shapes_and_batch():
    config = FCCLIPConfig.tiny(class_synonyms=[["a"], ["b"]], num_queries=5)
    torch.manual_seed(0)
    m = FCCLIPGenerator(config).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = m(x)
        single = m(x[1:])
    assert out.mask_logits.shape == (2, 5, 16, 24)
    assert out.class_embeddings.shape == out.clip_mask_embeddings.shape == (2, 5, m.embed_dim)
    assert torch.allclose(out.mask_logits[1:], single.mask_logits, atol=1e-5)
    assert all(not p.requires_grad for p in m.backbone.parameters())


def test_load_refuses_a_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="expected a dict"):
        load_fcclip_checkpoint(path, FCCLIPConfig.tiny(class_synonyms=[["a"]]))
    with pytest.raises(FileNotFoundError):
        load_fcclip_checkpoint(tmp_path / "missing.pth", FCCLIPConfig.tiny(class_synonyms=[["a"]]))
