"""Model cards: every shipped card parses; missing and corrupt weights give actionable errors."""
import pytest

from ovs_ros.models.cards import ChecksumMismatchError, ModelCard, WeightsNotFoundError, resolve_weights, sha256_of
from ovs_ros.paths import share_dir

CARDS = sorted((share_dir() / "models").glob("*.yaml"))


@pytest.mark.parametrize("path", CARDS, ids=[p.stem for p in CARDS])
def test_shipped_cards_parse(path):
    card = ModelCard.from_yaml(path)
    assert card.name == path.stem
    assert card.role in ("generator", "classifier")
    assert card.hf_hub_id or card.url or card.google_drive_id


def test_missing_weights_error_names_file_and_source(tmp_path):
    card = ModelCard.from_yaml(share_dir() / "models" / "maskclippp_eva02_b16_coco_panoptic.yaml")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(card, tmp_path)
    message = str(info.value)
    assert str(tmp_path / card.filename) in message
    assert card.google_drive_id in message


def test_hub_card_offline_still_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = ModelCard.from_yaml(share_dir() / "models" / "mask2former_swin_tiny_coco_panoptic.yaml")
    with pytest.raises(WeightsNotFoundError, match="facebook/mask2former-swin-tiny-coco-panoptic"):
        resolve_weights(card, tmp_path)


def test_checksum_is_verified(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not the real file")
    card = ModelCard(name="x", role="generator", architecture="a", filename="w.safetensors", format="safetensors",
                     url="https://example.invalid/w", sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        resolve_weights(card, tmp_path)
    card.sha256 = sha256_of(weights)
    assert resolve_weights(card, tmp_path) == weights


def test_offline_open_clip_tag_is_an_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ovs_ros.models.clip import ClipClassifier, ClipClassifierConfig

    with pytest.raises(WeightsNotFoundError, match="open_clip.create_model\\('ViT-B-16', pretrained='openai'\\)"):
        ClipClassifier(ClipClassifierConfig(model_name="ViT-B-16", pretrained="openai"))


# ------------------------------------------------------------------------------------------------------------------
# Settings travel with the checkpoint (issue 9).
import logging  # noqa: E402

import torch  # noqa: E402

from ovs_ros.config_utils import ConfigError  # noqa: E402
from ovs_ros.segmenter_config import (  # noqa: E402
    SegmenterConfig,
    load_segmenter_config,
    parse_set_overrides,
    reference_overrides,
    reference_settings,
)

CONFIGS = sorted(p.stem for p in (share_dir() / "config" / "segmenter").glob("*.yaml"))
SIZE_KEYS = {"generator.input_short_side", "generator.max_long_side", "classifier.input_short_side",
             "classifier.max_long_side", "generator.fixed_hw", "classifier.fixed_hw"}


def _card(name):
    return ModelCard.from_yaml(share_dir() / "models" / f"{name}.yaml")


def test_coco_panoptic_maskclippp_cards_evaluate_with_the_ensemble_off():
    """MaskCLIP++ evaluated every COCO-panoptic checkpoint with ENSEMBLE_ON False (alpha = beta = 1)."""
    names = [p.stem for p in CARDS if p.stem.startswith("maskclippp_") and "coco_panoptic" in p.stem]
    assert {"maskclippp_eva02_b16_coco_panoptic", "maskclippp_eva02_l14_336_coco_panoptic",
            "maskclippp_convnext_b_coco_panoptic", "maskclippp_eva01_g14_plus_coco_panoptic"} <= set(names)
    for name in names:
        card = _card(name)
        assert card.ensemble_on is False, name
        assert card.evaluation_alpha_beta() == (1.0, 1.0), name
        assert card.template_set == "t14" and card.input_short_side and card.base_clip_pretrained, name


def test_every_classifier_card_states_its_evaluation_settings():
    for path in CARDS:
        card = ModelCard.from_yaml(path)
        if card.role != "classifier":
            continue
        assert card.ensemble_on is not None, card.name
        alpha, beta = card.evaluation_alpha_beta()
        assert alpha is not None and beta is not None, card.name
        assert card.template_set and card.psm and card.input_short_side, card.name


def test_wtext_and_eva01_cards_load_and_keep_their_settings(tmp_path):
    card = _card("maskclippp_eva02_l14_336_wtext_coco_stuff")
    assert (card.ensemble_on, card.evaluation_alpha_beta(), card.template_set) == (True, (0.9, 1.0), "t1")
    assert card.text_tower_tuned and card.loadable
    for name in ("maskclippp_eva02_l14_336_wtext_coco_stuff", "maskclippp_eva01_g14_plus_coco_panoptic"):
        card = _card(name)
        config = load_segmenter_config({"classifier": {"model_name": card.architecture, "card": name}})
        assert config.classifier.pretrained == card.base_clip_pretrained, name
        (tmp_path / card.filename).write_bytes(b"x")
        assert resolve_weights(card, tmp_path) == tmp_path / card.filename


def test_a_card_this_version_cannot_load_is_refused_with_its_reason(tmp_path):
    text = (share_dir() / "models" / "maskclippp_eva02_b16_coco_panoptic.yaml").read_text()
    text += "\nloadable: false\nnot_loadable_reason: its frobnicator keys have no map yet\n"
    path = tmp_path / "maskclippp_eva02_b16_coco_panoptic.yaml"
    path.write_text(text)
    card = ModelCard.from_yaml(path)
    with pytest.raises(ConfigError, match="cannot be loaded by this version: its frobnicator keys"):
        load_segmenter_config({"classifier": {"model_name": card.architecture, "card": str(path)}})
    (tmp_path / card.filename).write_bytes(b"x")  # even with the file on disk
    with pytest.raises(WeightsNotFoundError, match="cannot be loaded.*frobnicator"):
        resolve_weights(card, tmp_path)


def test_mask2former_generator_cards_carry_maskclippp_pairing():
    """m2f-swin-t / m2f-swin-l: thresholds 0.8 / 0.8 (maskformer2_R50_bs16_50ep.yaml:44-45), test size 800 / 2560."""
    generators = [ModelCard.from_yaml(p) for p in CARDS]
    m2f = [c for c in generators if c.role == "generator" and c.architecture.startswith("mask2former/")]
    assert len(m2f) >= 2
    for card in m2f:
        assert (card.object_mask_threshold, card.overlap_threshold) == (0.8, 0.8), card.name
        assert (card.input_short_side, card.max_long_side) == (800, 2560), card.name


def test_card_refuses_alpha_with_the_ensemble_off():
    with pytest.raises(ValueError, match="ensemble_on is false"):
        ModelCard(name="x", role="classifier", architecture="a", filename="f", format="maskclippp_pth",
                  ensemble_on=False, ensemble_alpha=0.9)
    with pytest.raises(ValueError, match="not_loadable_reason"):
        ModelCard(name="x", role="classifier", architecture="a", filename="f", format="maskclippp_pth",
                  loadable=False)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_runs_its_reference_settings_or_says_it_is_fast(name):
    config = load_segmenter_config(name)
    reference = reference_settings(config)
    departures = reference_overrides(config)
    if config.profile == "random":
        assert not config.generator.card and not config.classifier.card, f"{name}: random profile with a card"
        return
    assert config.generator.card, f"{name}: a real-weights config names its generator card"
    assert config.classifier.card or config.classifier.model_name == "fcclip", f"{name}: no classifier card"
    assert reference, name
    if config.profile == "fast":
        assert departures, f"{name} says fast but runs the reference settings"
        assert {d.split()[0] for d in departures} <= SIZE_KEYS, f"{name}: a fast profile only changes sizes"
    else:
        assert departures == [], f"{name} ({config.profile or 'no profile'}): {departures}"
        for key, value in reference.items():
            got = config
            for part in key.split("."):
                got = getattr(got, part)
            assert got == value, (name, key)


def test_reference_profiles_resolve_to_maskclippp_settings():
    ref = load_segmenter_config("eva02_b16_swin_tiny_reference")
    assert (ref.generator.input_short_side, ref.generator.max_long_side, ref.classifier.input_short_side) == (
        800, 2560, 384)
    assert (ref.ensemble_alpha, ref.ensemble_beta, ref.object_mask_threshold, ref.overlap_threshold) == (
        1.0, 1.0, 0.8, 0.8)
    assert ref.classifier.max_long_side is None and ref.classifier.pretrained == "merged2b_s8b_b131k"
    fast = load_segmenter_config("eva02_b16_swin_tiny")
    assert (fast.generator.input_short_side, fast.generator.max_long_side) == (640, 1066)
    assert (fast.ensemble_alpha, fast.object_mask_threshold, fast.overlap_threshold) == (1.0, 0.8, 0.8)


def test_an_override_of_a_reference_setting_logs_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ovs_ros.segmenter_config"):
        config = load_segmenter_config("eva02_b16_swin_tiny_reference", {"object_mask_threshold": 0.0,
                                                                          "ensemble_alpha": 0.9})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "object_mask_threshold 0.0 (reference: 0.8)" in text and "ensemble_alpha 0.9 (reference: 1.0)" in text
    assert "profile: reference" in text and "differ from the published" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ovs_ros.segmenter_config"):
        load_segmenter_config(config)  # already told when it was loaded
        load_segmenter_config("eva02_b16_swin_tiny_reference")  # no override: silent
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_card_less_fallback_is_the_ensemble_off():
    config = load_segmenter_config({})
    assert (config.ensemble_alpha, config.ensemble_beta) == (1.0, 1.0)
    assert reference_overrides(config) == []
    assert isinstance(config, SegmenterConfig)


def test_ensemble_off_is_clip_only_with_the_generators_void():
    """alpha = beta = 1 through our ensemble equals MaskCLIP++'s ENSEMBLE_ON False path (`_add_void_logits`)."""
    from ovs_ros.postprocess import ensemble_class_probs

    g = torch.Generator().manual_seed(0)
    q, k_train, k = 7, 5, 4
    clip_logits = torch.randn(q, k, generator=g) * 3
    gen_logits = torch.randn(q, k_train + 1, generator=g) * 3
    lut = torch.tensor([0, 1, 2, 3, k, k])
    alpha, beta = _card("maskclippp_eva02_b16_coco_panoptic").evaluation_alpha_beta()
    ours = ensemble_class_probs(clip_logits, gen_logits, lut, torch.tensor([True, True, False, True]), alpha, beta)
    void_prob = gen_logits.softmax(-1)[:, -1:]  # literal re-statement of the reference
    reference = torch.cat([clip_logits.softmax(-1) * (1 - void_prob), void_prob], dim=-1)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_set_overrides_parse_dotted_keys_and_yaml_values():
    overrides = parse_set_overrides(["generator.input_short_side=800", "vocabulary=[person, dog]",
                                     "text_cache_dir=null", "ensemble_alpha=0.9", "precision=bf16"])
    assert overrides == {"generator.input_short_side": 800, "vocabulary": ["person", "dog"], "text_cache_dir": None,
                         "ensemble_alpha": 0.9, "precision": "bf16"}
    config = load_segmenter_config("tiny", overrides)
    assert config.generator.input_short_side == 800 and config.precision == "bf16"
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_overrides(["generator.input_short_side"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_segmenter_config("tiny", parse_set_overrides(["generator.no_such_key=1"]))


def test_missing_weights_error_names_ovs_weights_not_the_wrong_hints(tmp_path):
    for name in ("mask2former_swin_tiny_coco_panoptic", "maskclippp_eva02_b16_coco_panoptic"):
        card = _card(name)
        with pytest.raises(WeightsNotFoundError) as info:
            resolve_weights(card, tmp_path, allow_download=False)
        message = str(info.value)
        assert f"ovs-weights download {name}" in message and str(tmp_path / card.filename) in message
        assert "huggingface-cli" not in message and ".pkl" not in message


def test_a_card_whose_mask_token_depth_differs_is_refused(tmp_path):
    """A classifier card states the depth its mask tokens were trained at; a classifier built otherwise is refused
    before any weight is read."""
    import yaml

    from ovs_ros.model_factory import build_classifier
    from ovs_ros.segmenter_config import load_segmenter_config

    settings = load_segmenter_config("tiny").classifier
    card = tmp_path / "deep.yaml"
    card.write_text(yaml.safe_dump({"name": "deep", "role": "classifier", "architecture": settings.model_name,
                                    "filename": "deep.safetensors", "format": "ovs_safetensors", "psm": "linear",
                                    "template_set": "t1", "mask_prior_blocks": 5}))
    (tmp_path / "deep.safetensors").write_bytes(b"not read")
    import dataclasses

    settings = dataclasses.replace(settings, card=str(card), checkpoint=str(tmp_path / "deep.safetensors"))
    with pytest.raises(ValueError, match="last 5 blocks"):
        build_classifier(settings, tmp_path)
