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


TEVA_CARD_KEYS = {"rank", "adapter_hidden", "adapter_grid_factor"}  # ovs_ros.models.clip.TevaConfig.card_dict()


@dataclass
class ModelCard:
    """One downloadable weights file and the facts that belong with it."""

    name: str  # card id, e.g. "mask2former_swin_tiny_coco_panoptic"
    role: str  # "generator" | "classifier"
    architecture: str  # e.g. "mask2former/swin_tiny_coco_panoptic", "EVA02-B-16"
    filename: str  # file name under the weights directory
    format: str  # hf_safetensors | detectron2_pkl | maskclippp_pth | fcclip_pth | maftp_pth | ovs_safetensors
    hf_hub_id: Optional[str] = None  # e.g. "facebook/mask2former-swin-tiny-coco-panoptic"
    hf_filename: Optional[str] = None  # file inside the hub repo, e.g. "model.safetensors"
    url: Optional[str] = None  # where the original file is published (informational; `ovs-weights` uses hub / Drive)
    google_drive_id: Optional[str] = None  # Drive file id (fetched with gdown)
    sha256: Optional[str] = None  # recorded when a user first verifies the file
    base_clip_pretrained: Optional[str] = None  # classifier cards: open_clip tag of the base weights
    template_set: Optional[str] = None  # classifier cards with PSM weights: the templates the PSM was trained with
    psm: Optional[str] = None  # "linear" | "pseudo_text" | "identity" | "cdt" | "cdt_panoptic"
    # Evaluation settings the published numbers were made with (issue 9: settings travel with the checkpoint).
    input_short_side: Optional[int] = None  # the branch input size (generator image, or CLIP image)
    max_long_side: Optional[int] = None  # generator cards: cap on the long side of the generator image
    ensemble_on: Optional[bool] = None  # classifier cards: MaskCLIP++'s TEST.ENSEMBLE_ON (default off)
    ensemble_alpha: Optional[float] = None  # exponent on CLIP for seen classes (corrections.md item 9)
    ensemble_beta: Optional[float] = None  # ... for unseen classes
    object_mask_threshold: Optional[float] = None  # generator cards: merge thresholds as MaskCLIP++ pairs them
    overlap_threshold: Optional[float] = None
    text_tower_tuned: bool = False  # the file also holds a fine-tuned text tower (`_wtext` models)
    mask_prior_blocks: Optional[int] = None  # classifier cards (ViT): the mask tokens enter the last N blocks
    teva: Optional[dict] = None  # classifier cards: FISA / FOV-Seg TeVA settings (TevaConfig fields); None = no TeVA
    recipe: Optional[str] = None  # the training recipe the weights came from (ovs_training exports)
    loadable: bool = True  # false: a card for a file this project cannot load yet (the reason says why)
    not_loadable_reason: str = ""
    notes: str = ""
    published: dict = field(default_factory=dict)  # numbers from weights.md, e.g. {"ade150_miou": 33.8}

    def __post_init__(self) -> None:
        if self.role not in ("generator", "classifier"):
            raise ValueError(f"model card {self.name!r}: role must be generator or classifier, got {self.role!r}")
        if self.ensemble_on is False:
            for name in ("ensemble_alpha", "ensemble_beta"):
                value = getattr(self, name)
                if value is not None and float(value) != 1.0:
                    raise ValueError(f"model card {self.name!r}: ensemble_on is false, so {name} must be 1.0 "
                                     f"(CLIP only), got {value}")
        unknown = sorted(set(self.teva or {}) - TEVA_CARD_KEYS)
        if unknown:
            raise ValueError(f"model card {self.name!r}: unknown teva key(s) {unknown}; allowed: "
                             f"{sorted(TEVA_CARD_KEYS)}")
        if not self.loadable and not self.not_loadable_reason:
            raise ValueError(f"model card {self.name!r}: loadable is false, so not_loadable_reason must say why")

    def evaluation_alpha_beta(self) -> "tuple[Optional[float], Optional[float]]":
        """(alpha, beta) of the card's evaluation: (1, 1) with the ensemble off, the card's values with it on."""
        if self.ensemble_on is False:
            return 1.0, 1.0
        return self.ensemble_alpha, self.ensemble_beta

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "ModelCard":
        return dataclass_from_dict(cls, load_yaml(path), where=str(path))

    def how_to_get(self, destination: Path) -> str:
        sources = []
        if self.hf_hub_id:
            sources.append(f"the Hugging Face hub ({self.hf_hub_id})")
        if self.google_drive_id:
            sources.append(f"Google Drive (https://drive.google.com/file/d/{self.google_drive_id})")
        where = " or ".join(sources) or "no public source recorded"
        return (f"run `ovs-weights download {self.name}`, which fetches it from {where} and saves it as {destination} "
                f"(`ovs-weights list` shows every card and where its file goes)")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(card: ModelCard, weights_dir: Optional[Path] = None, *, allow_download: bool = True) -> Path:
    """Path to the card's weights file: from disk, else from the hub (hub cards only, when online); checked against
    the card's sha256, else the hash `ovs-weights` recorded at the first download."""
    from ovs_ros.weights import WeightsDownloadError, download, expected_sha256

    weights_dir = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR
    destination = weights_dir / card.filename
    if not card.loadable:
        raise WeightsNotFoundError(f"model card '{card.name}' cannot be loaded by this version: "
                                   f"{card.not_loadable_reason}")
    if not destination.is_file() and allow_download and card.hf_hub_id and os.environ.get("HF_HUB_OFFLINE") != "1":
        try:
            download(card, weights_dir, with_base=False)
        except (WeightsDownloadError, OSError, ImportError) as exc:
            LOG.warning("could not fetch %s from the hub (%s)", card.hf_hub_id, exc.__class__.__name__)
        except Exception as exc:  # huggingface_hub's own errors (offline, missing repo, auth) end in the error below
            LOG.warning("could not fetch %s from the hub (%s: %s)", card.hf_hub_id, exc.__class__.__name__, exc)
    if not destination.is_file():
        raise WeightsNotFoundError(
            f"weights for model card '{card.name}' not found: {destination} is missing. To fix: "
            f"{card.how_to_get(destination)}; or set OVS_ROS_WEIGHTS to the folder holding it."
        )
    expected, where = expected_sha256(card, weights_dir)
    if expected is None:
        LOG.info("model card '%s' records no sha256, so %s is not verified; `ovs-weights download %s` records the "
                 "hash of a download it makes", card.name, destination, card.name)
    else:
        actual = sha256_of(destination)
        if actual != expected:
            raise ChecksumMismatchError(
                f"{destination}: sha256 {actual} does not match {where} ({expected}); "
                f"the file is corrupt or a different release: run `ovs-weights download {card.name} --force`"
            )
    return destination
