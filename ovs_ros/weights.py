"""Weights files by command: what each model card needs, where it goes, and fetching it safely (`ovs-weights`).

A card names one file (`models/*.yaml`); it goes to `<weights dir>/<card.filename>`. A download is written to a
temporary file in the same folder and renamed into place only once complete and verified, so an interrupted or
corrupt download never leaves a file under the final name. A card with a sha256 is verified against it; a card
without one gets the hash of its first download recorded in a lock file beside the weights (`LOCK_NAME`), so later
runs detect a changed or truncated file. Shipped cards are never rewritten.

Sources, in this order: the Hugging Face hub (`huggingface_hub.hf_hub_download`), Google Drive (`gdown`, an optional
dependency). The base CLIP weights a classifier card builds on come from open_clip's own download (its cache), so
`open_clip.create_model(arch, pretrained=tag)` finds them offline later.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ovs_ros.models.cards import DEFAULT_WEIGHTS_DIR, ChecksumMismatchError, ModelCard, sha256_of

LOG = logging.getLogger(__name__)

LOCK_NAME = "ovs_weights.lock.json"

# fetch(card, partial_path, progress) writes the card's file to `partial_path`; raises on failure.
Fetcher = Callable[[ModelCard, Path, bool], None]
# fetch_base(architecture, tag, progress) puts open_clip base weights into open_clip's cache; returns their path.
BaseFetcher = Callable[[str, str, bool], Optional[str]]


class WeightsDownloadError(RuntimeError):
    """A file could not be fetched from any source its card names."""


def weights_dir_or_default(weights_dir: Optional[Path]) -> Path:
    return Path(weights_dir).expanduser() if weights_dir is not None else DEFAULT_WEIGHTS_DIR


# ---------------------------------------------------------------------------------------------------------- cards
def shipped_cards() -> List[ModelCard]:
    from ovs_ros.paths import share_dir

    return [ModelCard.from_yaml(p) for p in sorted((share_dir() / "models").glob("*.yaml"))
            if p.name != "README.yaml"]


def cards_for(name: str) -> List[ModelCard]:
    """The cards `name` needs: a card (name or YAML path), or a segmenter config (its generator and classifier
    cards). An unknown name is an error that lists what exists."""
    from ovs_ros.config_utils import ConfigError, load_yaml
    from ovs_ros.paths import resolve_data_path

    try:
        return [ModelCard.from_yaml(resolve_data_path(name, "models"))]
    except (FileNotFoundError, ConfigError):
        pass
    try:
        data = load_yaml(resolve_data_path(name, "config/segmenter"))
    except (FileNotFoundError, ConfigError):
        known = ", ".join(c.name for c in shipped_cards())
        raise ValueError(f"{name!r} is neither a model card nor a segmenter config; cards: {known}") from None
    found = []
    for section in ("generator", "classifier"):
        card = (data.get(section) or {}).get("card")
        if card:
            found.append(ModelCard.from_yaml(resolve_data_path(card, "models")))
    if not found:
        raise ValueError(f"segmenter config {name!r} names no model card (random weights): nothing to download")
    return found


# ----------------------------------------------------------------------------------------------------- lock file
def read_lock(weights_dir: Path) -> Dict[str, dict]:
    path = Path(weights_dir) / LOCK_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or delete it (it only records hashes)") from exc
    return data.get("files", {}) if isinstance(data, dict) else {}


def record_sha256(weights_dir: Path, card: ModelCard, sha256: str, source: str) -> None:
    """Write the hash of a first download into the lock file (atomically: tmp + rename)."""
    weights_dir = Path(weights_dir)
    files = read_lock(weights_dir)
    files[card.filename] = {"card": card.name, "sha256": sha256, "source": source,
                            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _atomic_write_text(weights_dir / LOCK_NAME, json.dumps({"version": 1, "files": files}, indent=2, sort_keys=True))


def expected_sha256(card: ModelCard, weights_dir: Path) -> tuple:
    """(sha256, where it comes from) that the card's file must have: the card's own, else the lock file's, else
    (None, None)."""
    if card.sha256:
        return card.sha256.lower(), f"model card '{card.name}'"
    entry = read_lock(weights_dir).get(card.filename)
    if entry and entry.get("sha256"):
        return str(entry["sha256"]).lower(), f"{Path(weights_dir) / LOCK_NAME} (first download)"
    return None, None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------------------------------------- status
@dataclass
class WeightsStatus:
    card: ModelCard
    path: Path
    state: str  # "missing" | "verified" | "unverified" | "mismatch"
    detail: str = ""


def card_status(card: ModelCard, weights_dir: Optional[Path] = None, *, verify: bool = True) -> WeightsStatus:
    """Is the card's file there, and does it match its recorded hash? (`verify=False` skips hashing big files.)"""
    weights_dir = weights_dir_or_default(weights_dir)
    path = weights_dir / card.filename
    if not path.is_file():
        return WeightsStatus(card, path, "missing")
    expected, where = expected_sha256(card, weights_dir)
    if expected is None:
        return WeightsStatus(card, path, "unverified", "no sha256 on the card or in the lock file")
    if not verify:
        return WeightsStatus(card, path, "unverified", f"not hashed (sha256 in {where})")
    actual = sha256_of(path)
    if actual != expected:
        return WeightsStatus(card, path, "mismatch", f"sha256 {actual} != {expected} ({where})")
    return WeightsStatus(card, path, "verified", f"sha256 matches {where}")


def format_list(statuses: List[WeightsStatus]) -> str:
    """The `ovs-weights list` table: one line per card."""
    rows = [("card", "role", "state", "source", "path")]
    for s in statuses:
        state = s.state if s.card.loadable else f"{s.state}, not loadable yet"
        rows.append((s.card.name, s.card.role, state, _source_of(s.card), str(s.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    details = [f"  {s.card.name}: {s.detail}" for s in statuses if s.state == "mismatch"]
    return "\n".join(lines + details)


def _source_of(card: ModelCard) -> str:
    if card.hf_hub_id:
        return f"hf:{card.hf_hub_id}"
    if card.google_drive_id:
        return f"gdrive:{card.google_drive_id}"
    return "none recorded"


# ------------------------------------------------------------------------------------------------------ download
def fetch_from_sources(card: ModelCard, partial: Path, progress: bool = True) -> None:
    """The default fetcher: the hub when the card names a hub id, else Google Drive."""
    if card.hf_hub_id:
        _fetch_from_hub(card, partial, progress)
    elif card.google_drive_id:
        _fetch_from_drive(card, partial, progress)
    else:
        raise WeightsDownloadError(f"model card '{card.name}' names no hub id and no Google Drive id")


def _fetch_from_hub(card: ModelCard, partial: Path, progress: bool) -> None:
    from huggingface_hub import hf_hub_download

    # Into a scratch folder beside the target (same file system, so the final rename is atomic), not the hub cache.
    with tempfile.TemporaryDirectory(dir=partial.parent, prefix=".hf-") as scratch:
        got = hf_hub_download(repo_id=card.hf_hub_id, filename=card.hf_filename or card.filename, local_dir=scratch)
        shutil.move(got, partial)


def _fetch_from_drive(card: ModelCard, partial: Path, progress: bool) -> None:
    try:
        import gdown
    except ImportError as exc:
        raise WeightsDownloadError(
            f"model card '{card.name}' is on Google Drive, which needs gdown: pip install gdown (or download "
            f"https://drive.google.com/file/d/{card.google_drive_id} in a browser and save it as "
            f"{partial.parent / card.filename})") from exc
    out = gdown.download(id=card.google_drive_id, output=str(partial), quiet=not progress)
    if not out or not partial.is_file():
        raise WeightsDownloadError(f"gdown could not fetch Drive file {card.google_drive_id} (quota or permission); "
                                   f"download it in a browser and save it as {partial.parent / card.filename}")


def fetch_open_clip_base(architecture: str, tag: str, progress: bool = True) -> Optional[str]:
    """open_clip's own download of a base CLIP (into its cache, where `create_model` looks for it)."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture, tag)
    if not cfg:
        known = ", ".join(t for a, t in open_clip.list_pretrained() if a == architecture) or "none"
        raise WeightsDownloadError(f"open_clip has no weights {architecture!r} / {tag!r} (tags: {known})")
    return download_pretrained(cfg) or None  # open_clip shows its own progress bar (hub / tqdm)


def download(card: ModelCard, weights_dir: Optional[Path] = None, *, fetch: Optional[Fetcher] = None,
             fetch_base: Optional[BaseFetcher] = None, with_base: bool = True, force: bool = False,
             progress: bool = True) -> Path:
    """Fetch the card's file to its path (and, `with_base`, a classifier card's base CLIP weights); returns the path.
    `fetch` / `fetch_base` default to `fetch_from_sources` / `fetch_open_clip_base` (tests inject fakes).

    A file already there is kept when it matches its hash (or nothing records one); a mismatching one is refused
    unless `force`. The new file is hashed before it is renamed into place: a mismatch with the card's sha256 (or
    the lock file's) deletes it and raises `ChecksumMismatchError`; with no hash anywhere, its hash is recorded.
    """
    weights_dir = weights_dir_or_default(weights_dir)
    destination = weights_dir / card.filename
    if destination.is_file() and not force:
        status = card_status(card, weights_dir)
        if status.state == "mismatch":
            raise ChecksumMismatchError(f"{destination} is there but does not match: {status.detail}; delete it or "
                                        f"run `ovs-weights download {card.name} --force`")
        LOG.info("%s: already present (%s)", card.name, status.state)
    else:
        weights_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=weights_dir, prefix=f".{card.filename}.", suffix=".part")
        os.close(fd)
        partial = Path(tmp)
        try:
            (fetch or fetch_from_sources)(card, partial, progress)
            if not partial.is_file() or partial.stat().st_size == 0:
                raise WeightsDownloadError(f"{card.name}: the download produced no data")
            actual = sha256_of(partial)
            expected, where = expected_sha256(card, weights_dir)
            if expected is not None and actual != expected:
                raise ChecksumMismatchError(f"download of {card.name} has sha256 {actual}, but {where} records "
                                            f"{expected}: refused (nothing written to {destination})")
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
        if expected is None:
            record_sha256(weights_dir, card, actual, _source_of(card))
            LOG.info("%s: sha256 %s recorded in %s", card.name, actual, weights_dir / LOCK_NAME)
        LOG.info("%s: saved as %s", card.name, destination)
    if with_base and card.role == "classifier" and card.base_clip_pretrained:
        where = (fetch_base or fetch_open_clip_base)(card.architecture, card.base_clip_pretrained, progress)
        LOG.info("%s: base CLIP %s/%s ready%s", card.name, card.architecture, card.base_clip_pretrained,
                 f" ({where})" if where else "")
    return destination
