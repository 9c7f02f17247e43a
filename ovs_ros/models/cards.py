"""Model cards: where a weights file comes from, how to check it, and what travels with it.

A card is a small YAML file in `models/` (see `models/README.md`). Resolving a card never guesses: a file found on
disk is checked against the card's sha256 when one is recorded; a file that is missing is fetched from the Hugging
Face hub only when the card names a hub id and the hub is reachable, and otherwise the error says which file is
missing, where to download it and where to put it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ovs_ros.config_utils import dataclass_from_dict, load_yaml

LOG = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path(os.environ.get("OVS_ROS_WEIGHTS", Path.home() / ".cache" / "ovs_ros" / "weights"))


class WeightsNotFoundError(FileNotFoundError):
    """A model card's weights file is not on disk and could not be fetched."""


class ChecksumMismatchError(ValueError):
    """A weights file on disk does not match the sha256 its card records."""


@dataclass
class ModelCard:
    """One downloadable weights file and the facts that belong with it."""

    name: str  # card id, e.g. "mask2former_swin_tiny_coco_panoptic"
    role: str  # "generator" | "classifier"
    architecture: str  # e.g. "mask2former/swin_tiny_coco_panoptic", "EVA02-B-16"
    filename: str  # file name under the weights directory
    format: str  # "hf_safetensors" | "detectron2_pkl" | "maskclippp_pth" | "ovs_safetensors" (ovs_training export)
    hf_hub_id: Optional[str] = None  # e.g. "facebook/mask2former-swin-tiny-coco-panoptic"
    hf_filename: Optional[str] = None  # file inside the hub repo, e.g. "model.safetensors"
    url: Optional[str] = None  # direct download URL, where one exists
    google_drive_id: Optional[str] = None  # Drive file id (cannot always be fetched by a plain GET)
    sha256: Optional[str] = None  # recorded when a user first verifies the file
    base_clip_pretrained: Optional[str] = None  # classifier cards: open_clip tag of the base weights
    template_set: Optional[str] = None  # classifier cards with PSM weights: the templates the PSM was trained with
    psm: Optional[str] = None  # "linear" | "pseudo_text" | "identity"
    input_short_side: Optional[int] = None  # the branch input size the published numbers use
    ensemble_alpha: Optional[float] = None  # corrections.md item 9
    notes: str = ""
    published: dict = field(default_factory=dict)  # numbers from weights.md, e.g. {"ade150_miou": 33.8}

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "ModelCard":
        return dataclass_from_dict(cls, load_yaml(path), where=str(path))

    def how_to_get(self, destination: Path) -> str:
        sources = []
        if self.hf_hub_id:
            command = f"huggingface-cli download {self.hf_hub_id} {self.hf_filename or ''}".strip()
            sources.append(f"Hugging Face hub: `{command}`")
        if self.url:
            sources.append(f"URL: {self.url}")
        if self.google_drive_id:
            sources.append(f"Google Drive file id {self.google_drive_id} (https://drive.google.com/file/d/{self.google_drive_id})")
        where = "; ".join(sources) or "no public source recorded"
        return f"download it from {where} and save it as {destination}"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(card: ModelCard, weights_dir: Optional[Path] = None, *, allow_download: bool = True) -> Path:
    """Path to the card's weights file: from disk, else from the hub; checked against the card's sha256."""
    weights_dir = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR
    destination = weights_dir / card.filename
    if not destination.is_file() and allow_download and card.hf_hub_id:
        destination = _download_from_hub(card, weights_dir) or destination
    if not destination.is_file():
        raise WeightsNotFoundError(
            f"weights for model card '{card.name}' not found: {destination} is missing. To fix: "
            f"{card.how_to_get(weights_dir / card.filename)} (or set OVS_ROS_WEIGHTS to the folder holding it)."
        )
    if not card.sha256:
        LOG.info("model card '%s' records no sha256, so %s is not verified; once you trust the file, add "
                 "`sha256: <output of sha256sum %s>` to the card", card.name, destination, destination)
    else:
        actual = sha256_of(destination)
        if actual != card.sha256.lower():
            raise ChecksumMismatchError(
                f"{destination}: sha256 {actual} does not match model card '{card.name}' ({card.sha256}); "
                "the file is corrupt or a different release: delete it and download again"
            )
    return destination


def _download_from_hub(card: ModelCard, weights_dir: Path) -> Optional[Path]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub is a runtime dependency
        return None
    try:
        cached = hf_hub_download(repo_id=card.hf_hub_id, filename=card.hf_filename or card.filename)
    except Exception as exc:  # offline, missing repo, auth: all end in the same actionable error
        LOG.warning("could not fetch %s from the hub (%s)", card.hf_hub_id, exc.__class__.__name__)
        return None
    weights_dir.mkdir(parents=True, exist_ok=True)
    destination = weights_dir / card.filename
    if not destination.exists():
        os.symlink(cached, destination)
    return destination
