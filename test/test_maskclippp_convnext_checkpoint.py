"""MaskCLIP++ ConvNeXt checkpoints (visual_encoder.proxy.* + PseudoTextPSM psm.*) load into our classifier and PSM.

The fake checkpoints use the reference's key layout: `MaskCorrCheckpointer` saves `{"model": ...}` with the
`saved_modules()` state dicts, and `CLIPConvNeXt.proxy` is open_clip's visual `TimmModel`, so a visual key is
`visual_encoder.proxy.` + our `model.visual` key; the PSM keys are those of `psm/pesudo_text.py`.
"""
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("timm")

from ovs_ros.models.clip import (  # noqa: E402
    PseudoTextPSM,
    build_tiny_classifier,
    convert_maskclippp_convnext_state_dict,
    load_maskclippp_checkpoint,
    mask_class_logits,
    maskclippp_checkpoint_family,
)
from ovs_ros.models.clip.tiny import TINY_EMBED_DIM as D  # noqa: E402

SIZE = 64  # CLIP input side, a multiple of 32: a 2x2 stride-32 grid


def _jitter_(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _source(family: str = "convnext"):
    clf = build_tiny_classifier(family, seed=0)
    _jitter_(clf, seed=1)
    torch.manual_seed(2)
    psm = PseudoTextPSM(text_dim=D, image_dim=D)
    _jitter_(psm, seed=3)
    return clf.eval(), psm.eval()


def _fresh(family: str = "convnext"):
    clf = build_tiny_classifier(family, seed=5)
    torch.manual_seed(6)
    return clf.eval(), PseudoTextPSM(text_dim=D, image_dim=D).eval()


def _to_maskclippp_layout(clf, psm) -> dict:
    """Test-only inverse map: our names -> the names MaskCLIP++ saves for a ConvNeXt model."""
    out = {"visual_encoder.proxy." + k: v.clone() for k, v in clf.model.visual.state_dict().items()}
    out.update({"psm." + k: v.clone() for k, v in psm.state_dict().items()})
    return out


def _inputs():
    g = torch.Generator().manual_seed(11)
    pixels = torch.randn(1, 3, SIZE, SIZE, generator=g)
    masks = torch.rand(1, 4, SIZE, SIZE, generator=g)
    masks[:, 0] = 1.0
    text = torch.nn.functional.normalize(torch.randn(5, 3, D, generator=g), dim=-1)  # S=5 synonyms, T=3 templates
    return pixels, masks, text


def _logits(clf, psm):
    pixels, masks, text = _inputs()
    with torch.no_grad():
        out = clf.encode_masks(pixels, masks)
        return mask_class_logits(out.mask_embeddings, text, torch.tensor([0, 0, 1, 2, 3]), 4, psm, clf.logit_scale,
                                 patch_embeddings=out.patch_embeddings)


@pytest.mark.parametrize("family", ["convnext", "convnext-mlp"])
def test_convnext_checkpoint_round_trip_gives_identical_tensors_and_logits(tmp_path, family):
    src_clf, src_psm = _source(family)
    fake = _to_maskclippp_layout(src_clf, src_psm)
    assert "visual_encoder.proxy.trunk.stages.0.blocks.0.conv_dw.weight" in fake
    assert "visual_encoder.proxy.trunk.head.norm.weight" in fake
    assert ("visual_encoder.proxy.head.proj.weight" if family == "convnext"
            else "visual_encoder.proxy.head.mlp.fc1.weight") in fake
    assert {"psm.img_proj.weight", "psm.img2text.in_proj_weight", "psm.ln_1.bias"} <= set(fake)
    assert maskclippp_checkpoint_family(fake) == "convnext"
    path = tmp_path / "maskclippp_convnext.pth"
    torch.save({"model": fake}, path)

    dst_clf, dst_psm = _fresh(family)
    reference = _logits(src_clf, src_psm)
    assert not torch.equal(_logits(dst_clf, dst_psm), reference)
    load_maskclippp_checkpoint(dst_clf, dst_psm, path)

    for key, value in src_clf.model.visual.state_dict().items():
        assert torch.equal(dst_clf.model.visual.state_dict()[key], value), key
    for key, value in src_psm.state_dict().items():
        assert torch.equal(dst_psm.state_dict()[key], value), key
    assert torch.equal(_logits(dst_clf, dst_psm), reference)


def test_converter_splits_visual_and_psm_keys_by_prefix_only():
    src_clf, src_psm = _source()
    visual, psm = convert_maskclippp_convnext_state_dict({"model": _to_maskclippp_layout(src_clf, src_psm)})
    assert set(visual) == set(src_clf.model.visual.state_dict())
    assert set(psm) == set(src_psm.state_dict())


def test_extra_key_raises_naming_it(tmp_path):
    src_clf, src_psm = _source()
    fake = _to_maskclippp_layout(src_clf, src_psm)
    fake["visual_encoder.proxy.trunk.stages.0.blocks.0.mlp.grn.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"mlp\.grn\.weight"):
        convert_maskclippp_convnext_state_dict(fake)
    torch.save({"model": fake}, tmp_path / "extra.pth")
    with pytest.raises(KeyError, match=r"mlp\.grn\.weight"):
        load_maskclippp_checkpoint(*_fresh(), tmp_path / "extra.pth")

    # a name the map accepts but the tower lacks (a 9th block) is named too
    fake = _to_maskclippp_layout(src_clf, src_psm)
    fake["visual_encoder.proxy.trunk.stages.0.blocks.9.gamma"] = torch.zeros(40)
    torch.save({"model": fake}, tmp_path / "extra_block.pth")
    with pytest.raises(KeyError, match=r"trunk\.stages\.0\.blocks\.9\.gamma"):
        load_maskclippp_checkpoint(*_fresh(), tmp_path / "extra_block.pth")

    # PseudoTextPSM options the ConvNeXt configs leave off are refused with the reason
    fake = _to_maskclippp_layout(src_clf, src_psm)
    fake["psm.logit_scale"] = torch.tensor(4.6)
    with pytest.raises(KeyError, match=r"USE_LOGIT_SCALE.*psm\.logit_scale"):
        convert_maskclippp_convnext_state_dict(fake)


@pytest.mark.parametrize("missing", ["visual_encoder.proxy.trunk.stages.2.downsample.1.weight",
                                     "visual_encoder.proxy.head.proj.weight", "psm.img2text.out_proj.bias"])
def test_missing_key_raises_naming_it(tmp_path, missing):
    fake = _to_maskclippp_layout(*_source())
    del fake[missing]
    torch.save({"model": fake}, tmp_path / "missing.pth")
    short = missing.split(".", 1)[1].replace("proxy.", "", 1)
    with pytest.raises(KeyError, match=short.replace(".", r"\.")):
        load_maskclippp_checkpoint(*_fresh(), tmp_path / "missing.pth")


def test_shape_mismatch_and_missing_psm_are_refused(tmp_path):
    fake = _to_maskclippp_layout(*_source())
    fake["visual_encoder.proxy.trunk.head.norm.weight"] = torch.zeros(7)
    torch.save({"model": fake}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"trunk\.head\.norm\.weight \(7,\)"):
        load_maskclippp_checkpoint(*_fresh(), tmp_path / "shape.pth")

    fake = {k: v for k, v in _to_maskclippp_layout(*_source()).items() if not k.startswith("psm.")}
    torch.save({"model": fake}, tmp_path / "no_psm.pth")
    with pytest.raises(KeyError, match=r"img_proj\.weight"):
        load_maskclippp_checkpoint(*_fresh(), tmp_path / "no_psm.pth")
    clf, _ = _fresh()
    load_maskclippp_checkpoint(clf, None, tmp_path / "no_psm.pth")  # a visual-only file with no PSM to fill is fine
    with pytest.raises(ValueError, match="no psm was given"):
        load_maskclippp_checkpoint(clf, None, _save_full(tmp_path))


def _save_full(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"model": _to_maskclippp_layout(*_source())}, path)
    return path


def test_eva_checkpoint_into_convnext_classifier_and_back_raise_clearly(tmp_path):
    eva = build_tiny_classifier("eva", seed=0)
    fake = {"visual_encoder.proxy." + k.replace("trunk.", "", 1): v for k, v in eva.model.visual.state_dict().items()}
    fake["visual_encoder.mask_logit_scale"] = eva.mask_logit_scale.detach().clone()
    assert maskclippp_checkpoint_family(fake) == "eva"
    torch.save({"model": fake}, tmp_path / "eva.pth")
    with pytest.raises(ValueError, match=r"MaskCLIP\+\+ eva checkpoint, but the classifier is a convnext CLIP"):
        load_maskclippp_checkpoint(*_fresh(), tmp_path / "eva.pth")

    convnext = _save_full(tmp_path)
    with pytest.raises(ValueError, match=r"MaskCLIP\+\+ convnext checkpoint, but the classifier is a eva CLIP"):
        load_maskclippp_checkpoint(eva, None, convnext)
    with pytest.raises(ValueError, match="family 'vit'"):
        load_maskclippp_checkpoint(build_tiny_classifier("vit", seed=0), None, convnext)


def test_model_factory_loads_a_convnext_maskclippp_card(tmp_path):
    """The Segmenter's path: build_classifier reads the card (maskclippp_pth, pseudo_text, t14) and loads the file."""
    from ovs_ros.model_factory import build_classifier
    from ovs_ros.segmenter_config import ClassifierSettings

    src_clf, src_psm = _source()
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"model": _to_maskclippp_layout(src_clf, src_psm)}, weights / "tiny_convnext_maskclippp.pth")
    card = tmp_path / "tiny_convnext_maskclippp.yaml"
    card.write_text(
        "name: tiny_convnext_maskclippp\n"
        "role: classifier\n"
        "architecture: tiny-convnext\n"
        "filename: tiny_convnext_maskclippp.pth\n"
        "format: maskclippp_pth\n"
        "template_set: t14\n"
        "psm: pseudo_text\n"
        f"input_short_side: {SIZE}\n"
    )
    settings = ClassifierSettings(model_name="tiny-convnext", card=str(card), input_short_side=SIZE, random_seed=5)
    classifier, psm, template_set, real = build_classifier(settings, weights)
    assert template_set == "t14" and isinstance(psm, PseudoTextPSM)
    assert not real  # the text tower is the (random) tiny base CLIP's: MaskCLIP++ does not save a frozen one
    torch.testing.assert_close(classifier.model.visual.state_dict(), src_clf.model.visual.state_dict(),
                               rtol=0, atol=0)
    torch.testing.assert_close(psm.state_dict(), src_psm.state_dict(), rtol=0, atol=0)
    classifier.eval()
    psm.eval()
    assert torch.equal(_logits(classifier, psm), _logits(src_clf, src_psm))
