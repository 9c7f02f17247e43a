"""FC-CLIP in the Segmenter: alone (the fcclip_b profile, tiny random weights), as the mask generator of a MaskCLIP++
classifier, through the ONNX engines, and the shipped configs' reference settings. CPU, random weights."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs_ros.models.fcclip import FCCLIPConfig, FCCLIPGenerator, fcclip_ensemble_probs, synonym_text_classifier
from ovs_ros.models.fcclip.convert import convert_fcclip_state_dict, to_released_state_dict
from ovs_ros.models.fcclip.runtime import FCCLIP_TEMPLATE_SET, fcclip_mask_probs
from ovs_ros.postprocess import masks_for_merge, panoptic_merge
from ovs_ros.preprocess import image_to_tensor, prepare_branch
from ovs_ros.segmenter import Segmenter
from ovs_ros.segmenter_config import load_segmenter_config
from ovs_ros.templates import get_templates

PAIRING = {"classifier.model_name": "tiny-convnext", "classifier.input_short_side": 128, "ensemble_alpha": 1.0,
           "ensemble_beta": 1.0}


def image(seed: int = 0, hw=(120, 160)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*hw, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def alone():
    return Segmenter.from_config("fcclip_tiny_random")


@pytest.fixture(scope="module")
def paired():
    return Segmenter.from_config("fcclip_tiny_random", PAIRING)


def test_fcclip_templates_are_vild():
    from ovs_ros.models.fcclip import backbone  # noqa: F401 - the package imports

    vild = ["a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene", "There is the {} in the scene",
            "a photo of a {} in the scene", "a photo of a small {}.", "a photo of a medium {}.",
            "a photo of a large {}.", "This is a photo of a small {}.", "This is a photo of a medium {}.",
            "This is a photo of a large {}.", "There is a small {} in the scene.",
            "There is a medium {} in the scene.", "There is a large {} in the scene."]  # fcclip/fcclip.py:26-41
    assert list(get_templates(FCCLIP_TEMPLATE_SET)) == vild


def test_alone_runs_end_to_end_with_one_backbone_pass(alone):
    result = alone.segment(image())
    assert result.panoptic.shape == (120, 160)
    assert "classifier" not in result.timings_ms and "similarity" not in result.timings_ms
    assert alone.describe()["generator"] == "fcclip/tiny"
    assert len(result.segments) >= 1
    assert set(np.unique(result.panoptic)) <= {0} | {s.id for s in result.segments}


def test_alone_equals_a_hand_written_fcclip_pipeline(alone):
    """The Segmenter's wiring (text classifier, in- and out-of-vocabulary logits, FC-CLIP ensemble, merge) against the
    same steps written out from the model's parts."""
    rgb = image(1)
    result = alone.segment(rgb)
    gen = alone.generator
    vocab = alone.vocabulary
    with torch.no_grad():
        gen_in = prepare_branch(image_to_tensor(rgb, torch.device("cpu")), alone._generator_spec, gen.pixel_mean_01,
                                gen.pixel_std_01, torch.float32)
        out = gen(gen_in.pixel_values)
        sentences = [t.format(p) for p in vocab.phrases for t in get_templates("t14")]
        raw = gen.backbone.encode_text(gen.backbone.tokenize(sentences))
        text = gen.text_classifier(synonym_text_classifier(raw.view(len(vocab.phrases), 14, -1)))
        index = torch.from_numpy(vocab.synonym_class_index.copy())
        in_logits = gen.in_vocabulary_logits(out.class_embeddings, text, index, len(vocab))[0]
        out_logits = gen.out_of_vocabulary_logits(out.clip_mask_embeddings, text, index, len(vocab))[0]
        seen = torch.tensor([not {n for c in gen.config.class_synonyms for n in c}.isdisjoint(names)
                             for names in vocab.names])
        probs = fcclip_ensemble_probs(in_logits, out_logits, seen, 0.4, 0.8)
        masks = masks_for_merge(fcclip_mask_probs(out.mask_logits, gen_in.pixel_values.shape[-2:], gen_in.valid_hw,
                                                  rgb.shape[:2]), rgb.shape[:2])[0]
        merged = panoptic_merge(masks, probs, torch.tensor(vocab.is_thing), object_mask_threshold=0.0,
                                overlap_threshold=0.8)
    assert [s.class_index for s in result.segments] == merged.segment_class.tolist()
    np.testing.assert_array_equal(result.panoptic, merged.panoptic.numpy())
    scores = np.array([s.score for s in result.segments])
    np.testing.assert_allclose(scores, merged.segment_score.numpy(), rtol=1e-5)


def test_alone_ensemble_exponents_come_from_the_config():
    base = Segmenter.from_config("fcclip_tiny_random")
    other = Segmenter.from_config("fcclip_tiny_random", {"ensemble_alpha": 1.0, "ensemble_beta": 1.0})
    rgb = image(2)
    a, b = base.segment(rgb), other.segment(rgb)
    scores_a = [s.score for s in a.segments]
    scores_b = [s.score for s in b.segments]
    assert scores_a != scores_b


def test_paired_uses_fcclip_logits_over_the_test_vocabulary(paired):
    assert paired._fcclip is not None and not paired._classifier_in_generator
    state = paired._current()
    k = len(state.vocabulary)
    assert state.lut.tolist() == list(range(k + 1))  # identity: no train -> test look-up table
    result = paired.segment(image(3))
    assert {"classifier", "similarity"} <= set(result.timings_ms)


def test_vocabulary_change_encodes_unseen_phrases_for_both_towers(paired):
    fcclip_cache, clip_cache = paired._fcclip.text_cache, paired.text_cache
    assert fcclip_cache is not clip_cache and fcclip_cache.fingerprint != clip_cache.fingerprint
    before = (fcclip_cache.stats["phrases_encoded"], clip_cache.stats["phrases_encoded"])
    paired.set_vocabulary(["person", "zebra crossing", "stuff:sky, heaven"])
    after = (fcclip_cache.stats["phrases_encoded"], clip_cache.stats["phrases_encoded"])
    assert after[0] - before[0] == 2 and after[1] - before[1] == 2  # "zebra crossing", "heaven" only
    state = paired._current()
    assert state.fcclip.text_classifier.shape[0] == len(state.vocabulary.phrases) + 1  # + void
    assert state.fcclip.seen.tolist() == [True, False, True]  # COCO panoptic has person and sky
    result = paired.segment(image(4))
    assert all(s.class_index < 3 for s in result.segments)
    paired.set_vocabulary("coco_panoptic")


def test_fcclip_classifier_needs_an_fcclip_generator():
    with pytest.raises(ValueError, match="needs an fcclip/<variant> generator"):
        Segmenter.from_config("tiny", {"classifier.model_name": "fcclip"})


def test_unknown_fcclip_variant_is_refused():
    with pytest.raises(ValueError, match="unknown FC-CLIP variant"):
        Segmenter.from_config("fcclip_tiny_random", {"generator.architecture": "fcclip/convnext_huge"})


# ---------------------------------------------------------------------------------------------------------- ONNX
def test_generator_onnx_matches_eager(tmp_path):
    from ovs_ros.engines import OnnxRuntimeGenerator, export_generator_onnx, onnx_io_shapes

    torch.manual_seed(0)
    gen = FCCLIPGenerator(FCCLIPConfig.tiny()).eval()
    hw = (128, 192)
    path = export_generator_onnx(gen, tmp_path / "fcclip.onnx", hw)
    io = onnx_io_shapes(path)
    q, d = gen.config.num_queries, gen.embed_dim
    assert [(o["name"], o["shape"]) for o in io["outputs"]] == [
        ("mask_logits", [1, q, hw[0] // 4, hw[1] // 4]), ("class_embeddings", [1, q, d]),
        ("clip_mask_embeddings", [1, q, d])]
    pixels = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = gen(pixels)
    ort = OnnxRuntimeGenerator(gen, path)
    out = ort(pixels)
    assert type(out) is type(eager)
    for name in ("mask_logits", "class_embeddings", "clip_mask_embeddings"):
        torch.testing.assert_close(getattr(out, name), getattr(eager, name), atol=1e-4, rtol=0)
    assert ort.open_vocabulary and ort.backbone is gen.backbone  # the vocabulary side stays eager


def test_paired_segmenter_on_onnxruntime_matches_eager(tmp_path):
    fixed = {**PAIRING, "generator.fixed_hw": [128, 192], "classifier.fixed_hw": [128, 192],
             "engine_cache_dir": str(tmp_path)}
    eager = Segmenter.from_config("fcclip_tiny_random", {k: v for k, v in fixed.items() if "fixed" in k
                                                         or k in PAIRING})
    onnx = Segmenter.from_config("fcclip_tiny_random", {**fixed, "backend": "onnxruntime"})
    rgb = image(5)
    a, b = eager.segment(rgb), onnx.segment(rgb)
    np.testing.assert_array_equal(a.panoptic, b.panoptic)
    assert [s.class_index for s in a.segments] == [s.class_index for s in b.segments]


# ------------------------------------------------------------------------------------------- real architectures
@pytest.mark.slow
def test_convnext_base_w_320_architecture_and_proj_head_key_map():
    """FC-CLIP-B's real architecture (random weights): stage widths, the `visual.head.proj` head, 250 queries, and a
    state dict in the released layout loading back exactly."""
    torch.manual_seed(0)
    gen = FCCLIPGenerator(FCCLIPConfig.convnext_base_w_320())
    assert gen.backbone.stage_channels == (128, 256, 512, 1024)
    assert gen.backbone.head_kind == "proj" and gen.embed_dim == 640
    assert gen.config.num_queries == 250 and gen.config.decoder_layers == 9
    state = to_released_state_dict(gen, empty_weight=torch.ones(134))
    assert "backbone.clip_model.visual.head.proj.weight" in state
    assert state["sem_seg_head.predictor.class_embed.layers.2.weight"].shape == (640, 256)
    converted = convert_fcclip_state_dict({"model": state}, gen)
    assert set(converted) == set(gen.state_dict())


# ------------------------------------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize("name, generator, classifier, sizes, ensemble", [
    ("fcclip_b", "fcclip/convnext_base_w_320", "fcclip", (800, 1333), (0.4, 0.8)),
    ("eva02_b16_fcclip_b", "fcclip/convnext_base_w_320", "EVA02-B-16", (800, 2560), (1.0, 1.0)),
    ("convnext_b_fcclip_b", "fcclip/convnext_base_w_320", "convnext_base_w_320", (800, 2560), (1.0, 1.0)),
    ("eva02_l14_336_fcclip_l", "fcclip/convnext_large_d_320", "EVA02-L-14-336", (800, 2560), (1.0, 1.0)),
])
def test_shipped_configs_resolve_to_the_reference_settings(name, generator, classifier, sizes, ensemble):
    config = load_segmenter_config(name)
    assert config.generator.architecture == generator and config.classifier.model_name == classifier
    assert (config.generator.input_short_side, config.generator.max_long_side) == sizes
    assert (config.ensemble_alpha, config.ensemble_beta) == ensemble
    assert (config.object_mask_threshold, config.overlap_threshold) == (0.0, 0.8)
    assert config.template_set == "t14"


def test_fcclip_cards():
    from ovs_ros.models.cards import ModelCard
    from ovs_ros.paths import resolve_data_path

    b = ModelCard.from_yaml(resolve_data_path("fcclip_convnext_b_coco_panoptic", "models"))
    l_card = ModelCard.from_yaml(resolve_data_path("fcclip_convnext_l_coco_panoptic", "models"))
    assert (b.role, b.architecture, b.format) == ("generator", "fcclip/convnext_base_w_320", "fcclip_pth")
    assert (l_card.architecture, l_card.google_drive_id) == ("fcclip/convnext_large_d_320",
                                                             "1-91PIns86vyNaL3CzMmDD39zKGnPMtvj")
    assert l_card.published["ade150_pq"] == 26.8


def test_alone_on_onnxruntime_is_one_engine_and_matches_eager(tmp_path):
    """fcclip_b's shape: one generator engine whose outputs feed both classifiers; no classifier engine."""
    fixed = {"generator.fixed_hw": [128, 192], "engine_cache_dir": str(tmp_path)}
    eager = Segmenter.from_config("fcclip_tiny_random", {"generator.fixed_hw": [128, 192]})
    onnx = Segmenter.from_config("fcclip_tiny_random", {**fixed, "backend": "onnxruntime"})
    assert sorted(p.name.split("_")[0] for p in tmp_path.glob("*.onnx")) == ["generator"]
    rgb = image(6)
    a, b = eager.segment(rgb), onnx.segment(rgb)
    np.testing.assert_array_equal(a.panoptic, b.panoptic)
    np.testing.assert_allclose([s.score for s in a.segments], [s.score for s in b.segments], rtol=1e-3)


def test_ovs_export_of_fcclip_alone_writes_the_generator_engine_only(tmp_path, capsys):
    import json

    from ovs_ros.cli import export_main

    out = tmp_path / "engines"
    assert export_main(["--config", "fcclip_tiny_random", "--out-dir", str(out), "--generator-hw", "128", "192"]) == 0
    info = json.loads((out / "engines.json").read_text())
    assert info["classifier"] is None and not (out / "classifier.onnx").exists()
    assert [o["name"] for o in info["generator"]["outputs"]] == ["mask_logits", "class_embeddings",
                                                                 "clip_mask_embeddings"]
    assert "generator.onnx" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the reference fixture, end to end
FIXTURE = Path(os.environ.get(
    "OVS_FCCLIP_FIXTURE", Path(__file__).resolve().parents[2] / "shared" / "data" / "fixtures" / "fcclip_tiny_ref.pt"))


@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"FC-CLIP reference fixture not found at {FIXTURE}")
def test_segmenter_reproduces_fcclip_panoptic_and_semantic_results(tmp_path):
    """`Segmenter.from_config` with the fixture's weights (a released-layout .pth), training and test vocabularies
    and its image at its own size: FC-CLIP's panoptic map, segments and semantic argmax, exactly."""
    import yaml

    ref = torch.load(FIXTURE, weights_only=True)
    voc = ref["vocabulary"]
    pth = tmp_path / "fcclip_tiny.pth"
    torch.save(ref["checkpoint"], pth)
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"classes": [{"names": c.replace(", ", ",").split(",")}
                                                 for c in voc["train_classes"]]}))
    things = set(voc["thing_dataset_id_to_contiguous_id"].values())
    test_classes = [c if k in things else "stuff:" + c for k, c in enumerate(voc["test_classes"])]
    h, w = ref["inputs"]["image_sizes"][0]
    seg = Segmenter.from_config({
        "profile": "random",
        "generator": {"architecture": "fcclip/tiny", "checkpoint": str(pth), "training_vocabulary": str(train),
                      "input_short_side": h, "max_long_side": w},
        "classifier": {"model_name": "fcclip"},
        "vocabulary": test_classes, "template_set": "t14", "ensemble_alpha": 0.4, "ensemble_beta": 0.8,
        "object_mask_threshold": 0.0, "overlap_threshold": 0.8, "device": "cpu", "precision": "fp32",
        "text_cache_dir": None,
    })
    assert seg._current().fcclip.seen.long().tolist() == voc["category_overlapping_mask"].tolist()
    rgb = ref["inputs"]["image"].permute(1, 2, 0).numpy()
    result = seg.segment(rgb, semantic=True)
    post = ref["outputs"]["postprocess"]
    np.testing.assert_array_equal(result.panoptic, post["panoptic_seg"].numpy())
    assert [dict(id=s.id, isthing=s.is_thing, category_id=s.class_index) for s in result.segments] == \
        post["segments_info"]
    np.testing.assert_array_equal(result.semantic_inference, post["sem_seg"].argmax(0).numpy())


def test_both_text_towers_persist_under_their_own_fingerprints(tmp_path):
    seg = Segmenter.from_config("fcclip_tiny_random", {**PAIRING, "text_cache_dir": str(tmp_path),
                                                       "vocabulary": ["person", "stuff:sky"]})
    dirs = {seg._fcclip.text_cache.model_dir, seg.text_cache.model_dir}
    assert len(dirs) == 2 and all((d / "t14.safetensors").is_file() for d in dirs)
    again = Segmenter.from_config("fcclip_tiny_random", {**PAIRING, "text_cache_dir": str(tmp_path),
                                                         "vocabulary": ["person", "stuff:sky"]})
    assert again._fcclip.text_cache.stats["sentences_encoded"] == 0  # FC-CLIP's phrases come from disk
    assert again.text_cache.stats["sentences_encoded"] == 0


def test_half_precision_keeps_the_pixel_decoder_in_fp32():
    """bf16 on the CPU stands in for fp16 on a GPU: the frozen CLIP and the decoder run in half precision, the
    deformable pixel decoder in fp32 (as the reference), the logits and the ensemble in fp32."""
    seg = Segmenter.from_config("fcclip_tiny_random", {"precision": "bf16", "precision_fallback": False})
    assert seg.generator.backbone.clip.visual.trunk.stem[0].weight.dtype == torch.bfloat16
    assert seg.generator.pixel_decoder.mask_features.weight.dtype == torch.float32
    result = seg.segment(image(7), semantic=True)
    assert result.panoptic.shape == (120, 160) and result.semantic_inference.shape == (120, 160)
    assert all(np.isfinite(s.score) for s in result.segments)
