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
