"""`ovs-weights` offline: a fake fetcher stands in for the hub / Google Drive / open_clip (no network)."""
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import pytest

from ovs_ros import weights, weights_cli
from ovs_ros.models.cards import ChecksumMismatchError, ModelCard, resolve_weights
from ovs_ros.paths import share_dir

PAYLOAD = b"fake weights file \x00\x01" * 1000


def _card(**kwargs):
    fields = dict(name="fake_gen", role="generator", architecture="mask2former/tiny", filename="fake.safetensors",
                  format="hf_safetensors", hf_hub_id="someone/fake", hf_filename="model.safetensors")
    fields.update(kwargs)
    return ModelCard(**fields)


class FakeFetch:
    """Writes `payload` to the partial path; with `fail_after`, writes half of it and raises (a dropped link)."""

    def __init__(self, payload=PAYLOAD, fail_after=False):
        self.payload, self.fail_after, self.calls = payload, fail_after, []

    def __call__(self, card, partial, progress):
        self.calls.append((card.name, partial))
        assert partial.name != card.filename  # written beside the final name, renamed once verified
        if self.fail_after:
            partial.write_bytes(self.payload[: len(self.payload) // 2])
            raise ConnectionError("connection reset")
        partial.write_bytes(self.payload)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_download_writes_the_cards_path_and_records_the_hash(tmp_path):
    card, fetch = _card(), FakeFetch()
    path = weights.download(card, tmp_path, fetch=fetch)
    assert path == tmp_path / card.filename and path.read_bytes() == PAYLOAD
    lock = json.loads((tmp_path / weights.LOCK_NAME).read_text())
    assert lock["files"][card.filename]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert lock["files"][card.filename]["card"] == card.name
    assert weights.card_status(card, tmp_path).state == "verified"
    assert resolve_weights(card, tmp_path, allow_download=False) == path
    weights.download(card, tmp_path, fetch=fetch)  # already there and matching: not fetched again
    assert len(fetch.calls) == 1 and _leftovers(tmp_path) == []


def test_download_verifies_against_the_cards_sha256(tmp_path):
    card = _card(sha256=hashlib.sha256(PAYLOAD).hexdigest())
    weights.download(card, tmp_path, fetch=FakeFetch())
    assert weights.card_status(card, tmp_path).state == "verified"
    assert not (tmp_path / weights.LOCK_NAME).exists()  # the card has the hash: nothing to record


def test_hash_mismatch_is_refused_and_nothing_is_written(tmp_path):
    card = _card(sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match="refused"):
        weights.download(card, tmp_path, fetch=FakeFetch())
    assert not (tmp_path / card.filename).exists() and _leftovers(tmp_path) == []
    # a recorded first download protects later ones the same way
    plain = _card()
    weights.download(plain, tmp_path, fetch=FakeFetch())
    with pytest.raises(ChecksumMismatchError):
        weights.download(plain, tmp_path, fetch=FakeFetch(payload=b"another release"), force=True)
    assert (tmp_path / plain.filename).read_bytes() == PAYLOAD


def test_a_failed_download_leaves_no_file_under_the_final_name(tmp_path):
    card = _card()
    with pytest.raises(ConnectionError):
        weights.download(card, tmp_path, fetch=FakeFetch(fail_after=True))
    assert not (tmp_path / card.filename).exists() and _leftovers(tmp_path) == []
    assert not (tmp_path / weights.LOCK_NAME).exists()
    # an existing file survives a failed forced re-download untouched
    (tmp_path / card.filename).write_bytes(b"old")
    with pytest.raises(ConnectionError):
        weights.download(card, tmp_path, fetch=FakeFetch(fail_after=True), force=True)
    assert (tmp_path / card.filename).read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_a_changed_file_is_caught_by_the_recorded_hash(tmp_path):
    card = _card()
    path = weights.download(card, tmp_path, fetch=FakeFetch())
    path.write_bytes(PAYLOAD[:-1])  # truncated later
    assert weights.card_status(card, tmp_path).state == "mismatch"
    with pytest.raises(ChecksumMismatchError, match=weights.LOCK_NAME):
        resolve_weights(card, tmp_path, allow_download=False)
    with pytest.raises(ChecksumMismatchError, match="--force"):
        weights.download(card, tmp_path, fetch=FakeFetch())
    weights.download(card, tmp_path, fetch=FakeFetch(), force=True)
    assert weights.card_status(card, tmp_path).state == "verified"


def test_classifier_download_fetches_the_base_clip_through_open_clip(tmp_path):
    card = _card(name="fake_cls", role="classifier", architecture="EVA02-B-16", hf_hub_id=None,
                 google_drive_id="abc", base_clip_pretrained="merged2b_s8b_b131k", format="maskclippp_pth")
    seen = []
    weights.download(card, tmp_path, fetch=FakeFetch(), fetch_base=lambda a, t, p: seen.append((a, t)) or "/c")
    assert seen == [("EVA02-B-16", "merged2b_s8b_b131k")]
    weights.download(card, tmp_path, fetch=FakeFetch(), fetch_base=lambda a, t, p: seen.append(1), with_base=False)
    assert len(seen) == 1


def test_default_fetcher_uses_the_hub_into_the_cards_path(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_hf_hub_download(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        target = Path(local_dir) / filename
        target.write_bytes(PAYLOAD)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    card = _card()
    path = weights.download(card, tmp_path)
    assert calls == [("someone/fake", "model.safetensors")] and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([card.filename, weights.LOCK_NAME])


def test_google_drive_without_gdown_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)
    card = _card(hf_hub_id=None, google_drive_id="1xMlDmgiVuShx-KWzLzOB-0_qvawIAa9m")
    with pytest.raises(weights.WeightsDownloadError, match="pip install gdown"):
        weights.download(card, tmp_path)
    assert not (tmp_path / card.filename).exists() and _leftovers(tmp_path) == []


def test_google_drive_through_gdown(tmp_path, monkeypatch):
    import types

    got = []

    def fake_gdown_download(id, output, quiet):
        got.append(id)
        with open(output, "wb") as f:
            f.write(PAYLOAD)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=fake_gdown_download))
    card = _card(hf_hub_id=None, google_drive_id="drive-id")
    assert weights.download(card, tmp_path).read_bytes() == PAYLOAD and got == ["drive-id"]


def test_cards_for_a_card_or_a_config():
    assert [c.name for c in weights.cards_for("maskclippp_eva02_b16_coco_panoptic")] == [
        "maskclippp_eva02_b16_coco_panoptic"]
    assert [c.name for c in weights.cards_for("eva02_b16_swin_tiny")] == [
        "mask2former_swin_tiny_coco_panoptic", "maskclippp_eva02_b16_coco_panoptic"]
    with pytest.raises(ValueError, match="names no model card"):
        weights.cards_for("tiny")
    with pytest.raises(ValueError, match="neither a model card nor a segmenter config"):
        weights.cards_for("no_such_thing")


def test_list_shows_every_card_its_state_and_path(tmp_path, capsys):
    card = weights.cards_for("mask2former_swin_tiny_coco_panoptic")[0]
    (tmp_path / card.filename).write_bytes(b"unverified file")
    assert weights_cli.main(["--weights-dir", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    names = {p.stem for p in (share_dir() / "models").glob("*.yaml")}
    assert set(lines) == names
    assert " unverified " in lines[card.name] and str(tmp_path / card.filename) in lines[card.name]
    assert " missing " in lines["maskclippp_eva02_b16_coco_panoptic"]
    assert "gdrive:11n8VRcfaTsb7s7I3i7dlvq3Jy4GSgDr2" in lines["maskclippp_eva02_b16_coco_panoptic"]
    assert not any("not loadable" in line for line in lines.values())  # every shipped card loads
    unloadable = dataclasses.replace(card, loadable=False, not_loadable_reason="no key map")
    row = weights.format_list([weights.WeightsStatus(unloadable, tmp_path / card.filename, "missing", "")])
    assert "missing, not loadable yet" in row.splitlines()[1]
    (tmp_path / weights.LOCK_NAME).write_text(json.dumps({"files": {card.filename: {"sha256": "0" * 64}}}))
    assert weights_cli.main(["--weights-dir", str(tmp_path), "list"]) == 1  # a mismatch is a failure
    assert "MISMATCH" in capsys.readouterr().out.upper()


def test_cli_download_of_a_config(tmp_path, monkeypatch, capsys):
    fetch = FakeFetch()
    monkeypatch.setattr(weights, "fetch_from_sources", fetch)
    assert weights_cli.main(["--weights-dir", str(tmp_path), "download", "eva02_b16_swin_tiny", "--no-base"]) == 0
    assert [name for name, _ in fetch.calls] == ["mask2former_swin_tiny_coco_panoptic",
                                                 "maskclippp_eva02_b16_coco_panoptic"]
    out = capsys.readouterr().out
    assert str(tmp_path / "mask2former-swin-tiny-coco-panoptic.safetensors") in out
    assert weights_cli.main(["--weights-dir", str(tmp_path), "download", "no_such_card"]) == 1


def test_open_clip_base_fetch_names_the_known_tags_for_a_wrong_one():
    with pytest.raises(weights.WeightsDownloadError, match="merged2b_s8b_b131k"):
        weights.fetch_open_clip_base("EVA02-B-16", "no_such_tag", False)
