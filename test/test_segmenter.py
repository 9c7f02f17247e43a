"""The Segmenter end to end on the tiny random-weight models and a real photo."""
import json

import numpy as np
import pytest

from ovs_ros.cli import demo_main, main as segment_main, parse_vocab_argument, sample_image
from ovs_ros.config_utils import ConfigError
from ovs_ros.segmenter import Segmenter
from ovs_ros.segmenter_config import load_segmenter_config
from ovs_ros.vocabulary import VocabularyError


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter.from_config("tiny")


@pytest.fixture(scope="module")
def photo():
    return sample_image("chelsea")


def test_segment_real_photo_is_consistent(segmenter, photo):
    result = segmenter.segment(photo)
    h, w = photo.shape[:2]
    assert result.panoptic.shape == (h, w) and result.panoptic.dtype == np.int32
    assert result.semantic.shape == (h, w) and result.semantic.dtype == np.int32
    assert len(result.segments) > 0, "random tiny model with threshold 0.0 should still produce segments"
    ids = sorted(np.unique(result.panoptic[result.panoptic > 0]).tolist())
    assert ids == [s.id for s in result.segments]
    for seg in result.segments:
        pixels = result.panoptic == seg.id
        assert seg.area == int(pixels.sum())
        ys, xs = np.nonzero(pixels)
        assert seg.bbox_xywh == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert np.all(result.semantic[pixels] == seg.class_index)
        assert seg.label == segmenter.vocabulary.labels[seg.class_index]
        assert 0.0 <= seg.score <= 1.0
        assert seg.is_thing == segmenter.vocabulary.entries[seg.class_index].is_thing
    assert np.all(result.semantic[result.panoptic == 0] == result.void_class_id)
    for stage in ("preprocess", "generator", "classifier", "similarity", "ensemble", "merge", "total"):
        assert result.timings_ms[stage] >= 0.0


def test_segment_is_deterministic(segmenter, photo):
    a, b = segmenter.segment(photo), segmenter.segment(photo)
    np.testing.assert_array_equal(a.panoptic, b.panoptic)
    assert a.segments_table() == b.segments_table()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((1, 1, 3), np.uint8),
        "not an image",
    ],
)
def test_bad_images_are_refused(segmenter, bad):
    with pytest.raises(ValueError):
        segmenter.segment(bad)


def test_huge_image_refused_without_allocating(segmenter):
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8192, 8192, 3))
    with pytest.raises(ValueError, match="max_image_pixels"):
        segmenter.segment(huge)


def test_vocabulary_switch_is_atomic_and_incremental(photo):
    seg = Segmenter.from_config("tiny", {"vocabulary": ["cat", "sofa,couch", "stuff:floor"]})
    assert list(seg.vocabulary.labels) == ["cat", "sofa", "floor"]
    version = seg.vocabulary_version
    encoded_before = seg.text_cache.stats["sentences_encoded"]
    seg.set_vocabulary(["cat", "sofa,couch", "stuff:floor", "red mug"])
    assert seg.vocabulary_version == version + 1
    assert seg.text_cache.stats["sentences_encoded"] - encoded_before == 1  # t1: one sentence per new phrase
    with pytest.raises(VocabularyError):
        seg.set_vocabulary([])
    with pytest.raises(VocabularyError):
        seg.set_vocabulary(["ok", 3])
    with pytest.raises(VocabularyError):
        seg.set_vocabulary("no_such_vocabulary_file")
    assert seg.vocabulary_version == version + 1 and seg.vocabulary.labels[-1] == "red mug"
    result = seg.segment(photo)
    assert result.vocabulary_version == version + 1
    assert {s.label for s in result.segments} <= {"cat", "sofa", "floor", "red mug"}
    floor_segments = [s for s in result.segments if s.label == "floor"]
    assert all(not s.is_thing for s in floor_segments)


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key"):
        load_segmenter_config("tiny", {"generator.input_shortside": 100})
    with pytest.raises(ConfigError):
        load_segmenter_config("tiny", {"precision": "int4"})


def test_fp16_config_on_cpu_runs_fp32():
    """Precision follows the device (issue 11): an fp16 config on a CPU runs fp32 (test_precision.py has more)."""
    segmenter = Segmenter.from_config("tiny", {"precision": "fp16", "device": "cpu"})
    assert str(segmenter.dtype) == "torch.float32" and segmenter.describe()["precision"] == "fp32"


def test_real_weights_config_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        Segmenter.from_config("eva02_b16_swin_tiny", {"weights_dir": str(tmp_path), "device": "cpu",
                                                      "precision": "fp32"})
    message = str(info.value)
    assert str(tmp_path) in message and "download" in message


def test_parse_vocab_argument():
    assert parse_vocab_argument("person,dog,grass") == ["person", "dog", "grass"]
    assert parse_vocab_argument("person,man; dog ;") == ["person,man", "dog"]


def test_cli_segment_writes_overlay_and_json(tmp_path):
    out_png, out_json = tmp_path / "overlay.png", tmp_path / "segments.json"
    assert segment_main(["chelsea", "--vocab", "cat,sofa,grass", "--out", str(out_png), "--json", str(out_json)]) == 0
    import cv2

    overlay = cv2.imread(str(out_png))
    assert overlay is not None and overlay.shape[:2] == sample_image("chelsea").shape[:2]
    table = json.loads(out_json.read_text())
    assert {s["label"] for s in table["segments"]} <= {"cat", "sofa", "grass"}
    assert segment_main([str(tmp_path / "missing.jpg"), "--out", str(out_png)]) == 2


def test_demo_writes_outputs(tmp_path, capsys):
    assert demo_main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "overlay.png").stat().st_size > 0
    assert "random weights" in capsys.readouterr().out


def test_out_of_memory_is_reported_and_segmenter_recovers(segmenter, photo, monkeypatch):
    from ovs_ros.segmenter import SegmenterOutOfMemoryError
    import torch

    real_forward = segmenter.generator.forward

    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(segmenter.generator, "forward", exhausted)
    with pytest.raises(SegmenterOutOfMemoryError, match="ran out of memory"):
        segmenter.segment(photo)
    monkeypatch.setattr(segmenter.generator, "forward", real_forward)
    assert segmenter.segment(photo).panoptic.shape == photo.shape[:2]


def test_model_cards_supply_the_settings_a_config_leaves_open():
    """A config naming a card gets its CLIP input size, ensemble exponent and base CLIP weights; explicit values
    win; a card for another architecture is refused before anything is built."""
    convnext = {"classifier": {"model_name": "convnext_base_w_320", "card": "maskclippp_convnext_b_coco_panoptic"}}
    config = load_segmenter_config(convnext)
    assert config.classifier.input_short_side == 512 and (config.ensemble_alpha, config.ensemble_beta) == (1.0, 1.0)
    assert config.classifier.pretrained == "laion_aesthetic_s13b_b82k_augreg"
    assert config.classifier.max_long_side is None
    assert config.generator.input_short_side == 640  # no generator card: the fallback
    explicit = load_segmenter_config(convnext, {"classifier.input_short_side": 320, "ensemble_alpha": 0.5})
    assert explicit.classifier.input_short_side == 320 and explicit.ensemble_alpha == 0.5
    large = load_segmenter_config({"generator": {"architecture": "mask2former/swin_large_coco_panoptic",
                                                 "card": "mask2former_swin_large_coco_panoptic"}})
    assert large.generator.input_short_side == 800
    with pytest.raises(ConfigError, match="is for 'EVA02-B-16'"):
        load_segmenter_config({"classifier": {"model_name": "ViT-B-16", "card": "maskclippp_eva02_b16_coco_panoptic"}})
    with pytest.raises(ConfigError, match="model card 'no_such_card'"):
        load_segmenter_config({"classifier": {"card": "no_such_card"}})


@pytest.mark.slow
def test_realtime_architecture_segments_a_camera_frame(monkeypatch):
    """The real-time architecture (EVA02-B/16 CLIP at 384 + Mask2Former Swin-T at 640), random weights, on a 16:9
    frame: both branches get the sizes the references use, and the result is a consistent panoptic map."""
    import ovs_ros.segmenter as segmenter_module
    from ovs_ros.preprocess import prepare_branch as real_prepare_branch

    shapes = []

    def recording_prepare_branch(image_01, spec, *args, **kwargs):
        branch = real_prepare_branch(image_01, spec, *args, **kwargs)
        shapes.append((tuple(image_01.shape[-2:]), branch.valid_hw, tuple(branch.pixel_values.shape[-2:])))
        return branch

    monkeypatch.setattr(segmenter_module, "prepare_branch", recording_prepare_branch)
    seg = Segmenter.from_config("eva02_b16_swin_tiny_random", {"device": "cpu", "template_set": "t1",
                                                               "vocabulary": ["person", "rocket", "stuff:sky"]})
    frame = np.ascontiguousarray(np.resize(sample_image("astronaut"), (360, 640, 3)))
    result = seg.segment(frame)
    generator_shapes, clip_shapes = shapes
    # generator: short side 640 would make the long side 1138 > 1066, so the long side is capped; padded to /32
    assert generator_shapes == ((360, 640), (600, 1066), (608, 1088))
    # CLIP resizes the generator-sized image: short side 384, long side int(1066 * 384 / 600) = 682, padded to /16
    assert clip_shapes == ((600, 1066), (384, 682), (384, 688))
    assert result.panoptic.shape == (360, 640) and result.semantic.shape == (360, 640)
    ids = sorted(np.unique(result.panoptic[result.panoptic > 0]).tolist())
    assert ids == [s.id for s in result.segments]
    assert {s.label for s in result.segments} <= {"person", "rocket", "sky"}


def test_merge_runs_at_the_input_size_when_it_is_not_larger_than_the_generator_frame(segmenter, monkeypatch):
    import ovs_ros.segmenter as segmenter_module

    seen = []
    real_merge = segmenter_module.panoptic_merge

    def recording_merge(mask_probs, *args, **kwargs):
        seen.append(tuple(mask_probs.shape[-2:]))
        return real_merge(mask_probs, *args, **kwargs)

    monkeypatch.setattr(segmenter_module, "panoptic_merge", recording_merge)
    small = np.ascontiguousarray(sample_image("chelsea")[:150, :200])  # generator frame 256 x 341: merge at 150 x 200
    big = sample_image("chelsea")  # 300 x 451 is larger than its generator frame, 255 x 384 (long side capped)
    assert segmenter.segment(small).panoptic.shape == (150, 200)
    assert segmenter.segment(big).panoptic.shape == (300, 451)
    assert seen == [(150, 200), (255, 384)]


def test_every_shipped_segmenter_config_resolves():
    """Each config in config/segmenter/ loads, its cards match its architectures, and every size is settled."""
    from pathlib import Path

    names = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "config" / "segmenter").glob("*.yaml"))
    assert {"tiny", "eva02_b16_swin_tiny", "eva02_l14_336_swin_large", "convnext_b_swin_tiny"} <= set(names)
    for name in names:
        config = load_segmenter_config(name)
        assert config.generator.input_short_side and config.classifier.input_short_side, name
        assert config.ensemble_alpha is not None, name
        if config.classifier.card:
            assert config.classifier.pretrained, f"{name}: a fine-tuned card needs base CLIP weights"
    large = load_segmenter_config("eva02_l14_336_swin_large")
    sizes = (large.generator.input_short_side, large.classifier.input_short_side, large.ensemble_alpha)
    assert sizes == (800, 392, 1.0)  # ensemble off: MaskCLIP++'s COCO-panoptic evaluation
    convnext = load_segmenter_config("convnext_b_swin_tiny")
    assert (convnext.classifier.input_short_side, convnext.ensemble_alpha) == (512, 1.0)
