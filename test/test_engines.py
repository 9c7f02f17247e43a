"""ONNX export of the two engines, the engine cache and the onnxruntime backend (tiny models only)."""
import json

import onnx
import pytest
import torch

from ovs_ros.cli import export_main, sample_image
from ovs_ros.config_utils import ConfigError
from ovs_ros.engines import (
    EngineCache,
    OnnxRuntimeClassifier,
    OnnxRuntimeGenerator,
    export_classifier_onnx,
    export_generator_onnx,
)
from ovs_ros.model_factory import build_models
from ovs_ros.segmenter import Segmenter
from ovs_ros.segmenter_config import load_segmenter_config

GEN_HW = (256, 384)
CLIP_HW = (224, 320)
FIXED = {"generator.fixed_hw": list(GEN_HW), "classifier.fixed_hw": list(CLIP_HW)}


@pytest.fixture(scope="module")
def models():
    return build_models(load_segmenter_config("tiny"))


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def generator_onnx(models, onnx_dir):
    return export_generator_onnx(models.generator, onnx_dir / "generator.onnx", GEN_HW)


@pytest.fixture(scope="module")
def classifier_onnx(models, onnx_dir):
    return export_classifier_onnx(models.classifier, onnx_dir / "classifier.onnx", CLIP_HW,
                                  models.generator.config.num_queries)


def test_generator_onnx_matches_eager(models, generator_onnx):
    onnx.checker.check_model(str(generator_onnx), full_check=True)
    assert onnx.load(str(generator_onnx)).opset_import[0].version >= 17
    pixels = torch.randn(1, 3, *GEN_HW, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = models.generator(pixels)
    ort = OnnxRuntimeGenerator(models.generator, generator_onnx)(pixels)
    assert type(ort) is type(eager)
    assert ort.mask_logits.shape == eager.mask_logits.shape and ort.class_logits.shape == eager.class_logits.shape
    torch.testing.assert_close(ort.mask_logits, eager.mask_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ort.class_logits, eager.class_logits, atol=1e-4, rtol=0)


def test_classifier_onnx_matches_eager(models, classifier_onnx):
    assert models.classifier.family == "eva"
    onnx.checker.check_model(str(classifier_onnx), full_check=True)
    rng = torch.Generator().manual_seed(2)
    q = models.generator.config.num_queries
    pixels = torch.randn(1, 3, *CLIP_HW, generator=rng)
    masks = torch.rand(1, q, *CLIP_HW, generator=rng)
    with torch.no_grad():
        eager = models.classifier.encode_masks(pixels, masks)
    wrapped = OnnxRuntimeClassifier(models.classifier, classifier_onnx)
    ort = wrapped.encode_masks(pixels, masks)
    assert type(ort) is type(eager) and ort.patch_embeddings is None
    torch.testing.assert_close(ort.mask_embeddings, eager.mask_embeddings, atol=1e-4, rtol=0)
    torch.testing.assert_close(ort.image_embeddings, eager.image_embeddings, atol=1e-4, rtol=0)
    # Text and attributes are the eager module's.
    assert wrapped.text_fingerprint() == models.classifier.text_fingerprint()
    assert wrapped.embed_dim == models.classifier.embed_dim
    assert wrapped.size_divisibility == models.classifier.size_divisibility
    tokens = wrapped.tokenize(["a cat"])
    torch.testing.assert_close(wrapped.encode_text(tokens), models.classifier.encode_text(tokens))
    with pytest.raises(ValueError, match="fixed-shape engine"):
        wrapped.encode_masks(pixels, masks[:, :-1])


def test_engine_cache_reuses_and_rebuilds_corrupt_files(models, tmp_path):
    first = EngineCache(tmp_path)
    path = first.generator_engine(models.generator, GEN_HW)
    assert first.exports == 1 and path.parent == tmp_path and path.name.startswith("generator_")
    mtime = path.stat().st_mtime_ns

    second = EngineCache(tmp_path)  # a second start
    assert second.generator_engine(models.generator, GEN_HW) == path
    assert second.exports == 0 and second.reuses == 1 and path.stat().st_mtime_ns == mtime

    other_shape = second.generator_engine(models.generator, (224, 320))
    assert other_shape != path and second.exports == 1

    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated file
    third = EngineCache(tmp_path)
    assert third.generator_engine(models.generator, GEN_HW) == path
    assert third.exports == 1
    onnx.checker.check_model(str(path), full_check=True)
    assert not list(tmp_path.glob("*.tmp")), "no temporary files left behind"


def test_segmenter_onnxruntime_matches_eager(tmp_path):
    photo = sample_image("chelsea")
    eager = Segmenter.from_config("tiny", dict(FIXED))
    ort = Segmenter.from_config("tiny", dict(FIXED, backend="onnxruntime", engine_cache_dir=str(tmp_path)))
    assert eager.backend == "eager" and ort.backend == "onnxruntime" and ort.describe()["backend"] == "onnxruntime"
    assert isinstance(ort.generator, OnnxRuntimeGenerator) and isinstance(ort.classifier, OnnxRuntimeClassifier)
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    a, b = eager.segment(photo), ort.segment(photo)
    assert (a.panoptic == b.panoptic).mean() >= 0.99
    assert [s.label for s in a.segments] == [s.label for s in b.segments]
    assert set(a.timings_ms) == set(b.timings_ms)
    # An fp16 config on this CPU runs fp32 (one INFO line), so the fp32 engines serve it too: same cached files.
    half = Segmenter.from_config("tiny", dict(FIXED, backend="onnxruntime", precision="fp16",
                                              engine_cache_dir=str(tmp_path)))
    assert half.backend == "onnxruntime" and len(list(tmp_path.glob("*.onnx"))) == 2
    with pytest.raises(ConfigError, match="runs the fp32 ONNX engines"):
        Segmenter.from_config("tiny", dict(FIXED, backend="onnxruntime", precision="fp16", precision_fallback=False,
                                           engine_cache_dir=str(tmp_path)))


def test_onnxruntime_backend_needs_fixed_hw():
    with pytest.raises(ConfigError, match="generator.fixed_hw and classifier.fixed_hw"):
        load_segmenter_config("tiny", {"backend": "onnxruntime"})
    with pytest.raises(ConfigError, match="classifier.fixed_hw"):
        load_segmenter_config("tiny", {"backend": "onnxruntime", "generator.fixed_hw": [256, 384]})
    with pytest.raises(ConfigError, match="backend must be one of eager, onnxruntime, compiled, tensorrt, auto"):
        load_segmenter_config("tiny", {"backend": "openvino"})


def test_ovs_export_writes_checked_files(tmp_path, capsys):
    out = tmp_path / "engines"
    assert export_main(["--config", "tiny", "--out-dir", str(out)]) == 0
    sidecar = json.loads((out / "engines.json").read_text())
    for kind, inputs in (("generator", ["pixel_values"]), ("classifier", ["pixel_values", "mask_probs"])):
        path = out / sidecar[kind]["file"]
        onnx.checker.check_model(str(path), full_check=True)
        assert [i["name"] for i in sidecar[kind]["inputs"]] == inputs
        assert all(isinstance(d, int) for o in sidecar[kind]["outputs"] for d in o["shape"])
        assert len(sidecar[kind]["normalisation"]["pixel_mean_01"]) == 3
    assert sidecar["generator"]["inputs"][0]["shape"] == [1, 3, 256, 384]
    assert [o["name"] for o in sidecar["classifier"]["outputs"]] == ["mask_embeddings", "image_embeddings"]
    q = sidecar["generator"]["num_queries"]
    assert sidecar["classifier"]["inputs"][1]["shape"] == [1, q, 224, 320]
    assert sidecar["config"]["backend"] == "onnxruntime" and sidecar["config"]["generator"]["fixed_hw"] == [256, 384]
    assert sidecar["opset"] >= 17
    # The sidecar's config runs as is (fixed_hw set) with the onnxruntime backend.
    load_segmenter_config(dict(sidecar["config"], engine_cache_dir=str(tmp_path / "cache")))
    assert "generator.onnx" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_other_classifier_families_export(family, tmp_path):
    from ovs_ros.models.clip import build_tiny_classifier

    classifier = build_tiny_classifier(family, input_short_side=224).eval()
    path = export_classifier_onnx(classifier, tmp_path / f"{family}.onnx", CLIP_HW, 5)
    rng = torch.Generator().manual_seed(3)
    pixels, masks = torch.randn(1, 3, *CLIP_HW, generator=rng), torch.rand(1, 5, *CLIP_HW, generator=rng)
    with torch.no_grad():
        eager = classifier.encode_masks(pixels, masks)
    ort = OnnxRuntimeClassifier(classifier, path).encode_masks(pixels, masks)
    torch.testing.assert_close(ort.mask_embeddings, eager.mask_embeddings, atol=1e-4, rtol=0)
    assert (ort.patch_embeddings is None) == (eager.patch_embeddings is None)
    if eager.patch_embeddings is not None:
        torch.testing.assert_close(ort.patch_embeddings, eager.patch_embeddings, atol=1e-4, rtol=0)
