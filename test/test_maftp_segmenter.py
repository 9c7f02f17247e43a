"""MAFT+ in the Segmenter: alone (tiny random weights, panoptic and semantic CDT) equal to the same steps written out
from the model's parts, the CDT applied per frame after the cached text classifier (a vocabulary switch re-uses the
cache and changes the transfer), as a MaskCLIP++ generator, through the ONNX engine, and the shipped configs."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from ovs_ros.models.fcclip import synonym_text_classifier
from ovs_ros.models.fcclip.runtime import fcclip_mask_probs
from ovs_ros.models.maftp import MAFTPlusGenerator, maftp_class_probs
from ovs_ros.postprocess import masks_for_merge, panoptic_merge
from ovs_ros.preprocess import image_to_tensor, prepare_branch
from ovs_ros.segmenter import Segmenter
from ovs_ros.segmenter_config import load_segmenter_config
from ovs_ros.templates import get_templates


# A small vocabulary: with 133 classes a random head's best probability stays under MAFT+'s 0.2 object threshold, and
# no segment would be left to compare.
SMALL = {"vocabulary": ["person", "dog", "grass", "sky", "car"]}


def image(seed: int = 0, hw=(120, 160)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*hw, 3)) * 255).astype(np.uint8)


def randomise_cdt(segmenter: Segmenter, seed: int) -> None:
    """Random CDT tensors (the panoptic Linear starts at zero, which would make the transfer the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in segmenter.generator.cdt.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def alone():
    segmenter = Segmenter.from_config("maftp_tiny_random", SMALL)
    randomise_cdt(segmenter, 0)
    return segmenter


def hand_written(segmenter: Segmenter, rgb: np.ndarray):
    gen = segmenter.generator
    vocab = segmenter.vocabulary
    with torch.no_grad():
        gen_in = prepare_branch(image_to_tensor(rgb, torch.device("cpu")), segmenter._generator_spec,
                                gen.pixel_mean_01, gen.pixel_std_01, torch.float32)
        out = gen(gen_in.pixel_values)
        sentences = [t.format(p) for p in vocab.phrases for t in get_templates("t14")]
        raw = gen.backbone.encode_text(gen.backbone.tokenize(sentences))
        text = gen.text_classifier(synonym_text_classifier(raw.view(len(vocab.phrases), 14, -1)))
        index = torch.from_numpy(vocab.synonym_class_index.copy())
        in_logits = gen.in_vocabulary_logits(out.class_embeddings, text, index, len(vocab))[0]
        transferred = gen.cdt(out.clip_dense_embeddings, text)
        out_logits = gen.out_of_vocabulary_logits(out.clip_mask_embeddings, transferred, index, len(vocab))[0]
        probs = maftp_class_probs(in_logits, out_logits)
        masks = masks_for_merge(fcclip_mask_probs(out.mask_logits, gen_in.pixel_values.shape[-2:], gen_in.valid_hw,
                                                  rgb.shape[:2]), rgb.shape[:2])[0]
        is_thing = torch.tensor(np.array(vocab.is_thing, dtype=bool))
        merged = panoptic_merge(masks, probs, is_thing, object_mask_threshold=segmenter.config.object_mask_threshold,
                                overlap_threshold=segmenter.config.overlap_threshold)
    return merged, probs, out_logits


@pytest.mark.parametrize("name", ["maftp_tiny_random", "maftp_b_tiny_random"])
def test_alone_equals_a_hand_written_maftp_pipeline(name, alone):
    segmenter = alone if name == "maftp_tiny_random" else Segmenter.from_config(name, SMALL)
    if segmenter is not alone:
        randomise_cdt(segmenter, 1)
    assert isinstance(segmenter.generator, MAFTPlusGenerator)
    assert segmenter.generator.cdt.panoptic == (name == "maftp_tiny_random")
    assert (segmenter.config.object_mask_threshold, segmenter.config.overlap_threshold) == (0.2, 0.7)
    rgb = image(1)
    result = segmenter.segment(rgb)
    merged, _, _ = hand_written(segmenter, rgb)
    assert int(merged.segment_class.numel()) >= 1, "no segment: the comparison below would be vacuous"
    assert [s.class_index for s in result.segments] == [int(c) for c in merged.segment_class.tolist()]
    torch.testing.assert_close(torch.tensor([s.score for s in result.segments]), merged.segment_score.float(),
                               atol=1e-5, rtol=0)
    assert "classifier" not in result.timings_ms  # one backbone pass


def test_cdt_runs_per_frame_on_the_cached_classifier(alone):
    """The Segmenter's class probabilities are MAFT+'s (CDT applied); the cached text classifier is not changed by a
    frame, and a vocabulary switch back is served from the cache."""
    rgb = image(2)
    runtime = alone._fcclip
    state = alone._current()
    cached = state.fcclip.text_classifier.clone()
    _, probs, out_logits = hand_written(alone, rgb)
    with torch.no_grad():
        gen_in = prepare_branch(image_to_tensor(rgb, torch.device("cpu")), alone._generator_spec,
                                alone.generator.pixel_mean_01, alone.generator.pixel_std_01, torch.float32)
        generated = alone.generator(gen_in.pixel_values)
        ours = runtime.out_of_vocabulary_logits(generated, state.fcclip)
        torch.testing.assert_close(ours, out_logits, atol=1e-5, rtol=0)
        plain = alone.generator.out_of_vocabulary_logits(generated.clip_mask_embeddings, cached,
                                                         state.fcclip.synonym_class_index, state.fcclip.num_classes)
        assert (plain[0] - ours).abs().max() > 1e-3  # the transfer matters
        in_logits = runtime.in_vocabulary_logits(generated, state.fcclip)
        torch.testing.assert_close(runtime.ensemble(in_logits, ours, state.fcclip, 1.0, 1.0), probs, atol=1e-6,
                                   rtol=0)
    assert torch.equal(state.fcclip.text_classifier, cached)
    original = alone.vocabulary
    alone.set_vocabulary(["person", "dog", "tree"])
    small = alone.segment(rgb)
    encoded = alone._fcclip.text_cache.stats["phrases_encoded"]
    alone.set_vocabulary(original)  # back to the first vocabulary: served from the cache, nothing encoded
    assert alone._fcclip.text_cache.stats["phrases_encoded"] == encoded
    assert torch.equal(alone._current().fcclip.text_classifier, cached)
    assert {s.class_index for s in small.segments} <= {0, 1, 2}


def test_as_the_generator_of_a_maskclippp_classifier():
    """MaskCLIP++ pairs MAFT+ through its FCCLIPSegmentor: masks and the decoder's logits, no CDT."""
    segmenter = Segmenter.from_config("maftp_tiny_random", {
        **SMALL, "classifier.model_name": "tiny-convnext", "classifier.input_short_side": 128})
    result = segmenter.segment(image(3))
    assert "classifier" in result.timings_ms and result.panoptic.shape == (120, 160)
    assert result.segments
    randomise_cdt(segmenter, 9)  # the pairing never runs the CDT: nothing changes
    again = segmenter.segment(image(3))
    assert np.array_equal(result.panoptic, again.panoptic)
    assert [s.score for s in result.segments] == [s.score for s in again.segments]


def test_onnx_engine_carries_the_dense_embeddings_and_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    overrides = {"backend": "onnxruntime", "generator.fixed_hw": [128, 160], "engine_cache_dir": str(tmp_path)}
    eager = Segmenter.from_config("maftp_tiny_random", {**SMALL, "generator.fixed_hw": [128, 160]})
    engine = Segmenter.from_config("maftp_tiny_random", {**SMALL, **overrides})
    randomise_cdt(eager, 3)
    engine.generator.eager.cdt.load_state_dict(eager.generator.cdt.state_dict())
    onnx_files = list(tmp_path.rglob("*.onnx"))
    assert onnx_files
    import onnx

    outputs = [o.name for o in onnx.load(str(onnx_files[0])).graph.output]
    assert outputs == ["mask_logits", "class_embeddings", "clip_mask_embeddings", "clip_dense_embeddings"]
    rgb = image(4)
    a, b = eager.segment(rgb), engine.segment(rgb)
    assert a.segments, "no segment: the comparison below would be vacuous"
    assert np.array_equal(a.panoptic, b.panoptic)
    assert [s.class_index for s in a.segments] == [s.class_index for s in b.segments]


def test_wtext_maftl_pan_config_resolves_to_the_ens_settings():
    """MaskCLIPpp@8bf4718 ..._wtext_maft-l-pan_ens.yaml: ensemble on, alpha 0.9, beta MaskCLIP++'s default 1.0,
    merge 0.2 / 0.7, 100-query MAFT+-L-pan at short side 800 (no cap), CLIP at 392, templates t1; seen = COCO-pan.
    (Building it at full size with random weights takes about 60 s here: the key maps are tested on tiny models in
    the released layouts, test_maskclippp_wtext_checkpoint.py.)"""
    from ovs_ros.segmenter_config import reference_overrides

    config = load_segmenter_config("eva02_l14_336_wtext_maftl_pan")
    assert config.generator.architecture == "maftp/convnext_large_d_320_pan"
    assert config.generator.card == "maftp_l_pan_coco_panoptic"
    assert config.generator.training_vocabulary == "coco_panoptic"
    assert (config.classifier.model_name, config.classifier.card, config.classifier.pretrained) == (
        "EVA02-L-14-336", "maskclippp_eva02_l14_336_wtext_coco_stuff", "merged2b_s6b_b61k")
    assert (config.ensemble_alpha, config.ensemble_beta) == (0.9, 1.0)
    assert (config.object_mask_threshold, config.overlap_threshold) == (0.2, 0.7)
    assert (config.generator.input_short_side, config.generator.max_long_side) == (800, 2560)
    assert config.classifier.input_short_side == 392 and config.template_set == "t1"
    assert config.profile == "reference" and reference_overrides(config) == []


def test_released_maftp_configs_carry_the_reference_settings(caplog):
    with caplog.at_level(logging.WARNING):
        pan = load_segmenter_config("maftp_l_pan")
    assert pan.generator.architecture == "maftp/convnext_large_d_320_pan"
    assert (pan.object_mask_threshold, pan.overlap_threshold) == (0.2, 0.7)
    assert (pan.generator.input_short_side, pan.generator.max_long_side) == (800, 1333)  # MAFT+'s own test size
    assert (pan.ensemble_alpha, pan.ensemble_beta) == (1.0, 1.0)
    b = load_segmenter_config("maftp_b")
    assert b.generator.architecture == "maftp/convnext_base_w_320"
    assert (b.object_mask_threshold, b.overlap_threshold) == (0.2, 0.7)


def test_a_released_layout_file_loads_through_the_config(tmp_path):
    """`generator.checkpoint` goes through the MAFT+ key map (every tensor from the file, CDT included)."""
    from ovs_ros.models.maftp import MAFTPlusConfig, to_released_state_dict

    torch.manual_seed(5)
    source = MAFTPlusGenerator(MAFTPlusConfig.tiny())
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in source.cdt.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    path = tmp_path / "maftp_tiny.pth"
    torch.save({"model": to_released_state_dict(source, teacher=True)}, path)
    segmenter = Segmenter.from_config("maftp_tiny_random", {**SMALL, "generator.checkpoint": str(path)})
    for name, tensor in source.state_dict().items():
        assert torch.equal(segmenter.generator.state_dict()[name], tensor), name
    assert segmenter.segment(image(5)).panoptic.shape == (120, 160)


def test_an_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown MAFT\\+ variant 'huge'"):
        Segmenter.from_config("maftp_tiny_random", {"generator.architecture": "maftp/huge"})
