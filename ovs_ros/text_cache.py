"""Text-embedding cache: every (synonym, template) sentence is encoded once per text model, then reused.

Layout (chosen so that switching to an already-seen vocabulary is one dict walk plus one `index_select`):
per template set, a `phrase -> row` dict and one `[N, T, D]` float32 tensor on the target device. New phrases are
encoded in chunks and appended with one `cat`. On disk there is one safetensors file per template set under
`cache_dir/<fingerprint[:16]>/<template_set>.safetensors`, holding the phrases (metadata, JSON) and the embeddings,
plus the full fingerprint, the template strings and a SHA-256 checksum; a file that fails any check is logged,
deleted and rebuilt. Writes go to a temporary file and `os.replace`, so a crash never leaves a half-written cache.

The templates are kept separate (`[S, T, D]`, MaskCLIP++ `_cal_text_emb`), not averaged: LinearPSM weighs them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .templates import get_templates
from .vocabulary import Vocabulary

__all__ = ["VocabularyEmbeddings", "TextEmbeddingCache", "CACHE_FORMAT_VERSION"]

LOGGER = logging.getLogger(__name__)
CACHE_FORMAT_VERSION = "1"
_SAFE_DIR = re.compile(r"^[A-Za-z0-9_.-]+$")
# what a damaged or foreign cache file can raise while being parsed; it is then deleted and rebuilt
_BAD_FILE = (ValueError, OSError, TypeError, KeyError, AttributeError, UnicodeDecodeError)


@dataclass
class VocabularyEmbeddings:
    """Text embeddings of one vocabulary under one template set.

    text_embeddings: [S, T, D] float32, L2-normalised per sentence; S = phrases (all synonyms, class order),
        T = templates.
    synonym_class_index: [S] int64, class of each phrase (non-decreasing); class logits = max over a class's rows.
    """

    text_embeddings: Tensor
    synonym_class_index: Tensor
    num_classes: int
    template_set: str

    @property
    def num_templates(self) -> int:
        return int(self.text_embeddings.shape[1])

    @property
    def dim(self) -> int:
        return int(self.text_embeddings.shape[2])


class _TemplateStore:
    """All phrases encoded so far for one template set: `index[phrase] = row` into `emb` [N, T, D]."""

    __slots__ = ("templates", "index", "phrases", "emb", "unserved_from_disk")

    def __init__(self, templates: Tuple[str, ...]) -> None:
        self.templates = templates
        self.index: Dict[str, int] = {}
        self.phrases: List[str] = []
        self.emb: Optional[Tensor] = None
        self.unserved_from_disk: set = set()  # rows loaded from disk not yet served (for the disk_hits stat)

    def append(self, phrases: Sequence[str], emb: Tensor) -> None:
        base = len(self.phrases)
        for i, p in enumerate(phrases):
            self.index[p] = base + i
        self.phrases.extend(phrases)
        self.emb = emb if self.emb is None else torch.cat([self.emb, emb], dim=0)


class TextEmbeddingCache:
    """Encode vocabularies into `[S, T, D]` text embeddings, encoding only sentences never seen before.

    Args:
        encode_fn: sentences -> [N, D] text features (any device/dtype, need not be normalised; this class
            L2-normalises in float32). Called under `torch.no_grad()` with at most `chunk_size` sentences.
        fingerprint: identifies the text tower's weights (e.g. the checkpoint's SHA-256); a cache made with another
            fingerprint is never reused.
        cache_dir: where to keep safetensors files across runs; None keeps the cache in memory only.
        chunk_size: sentences per `encode_fn` call (MaskCLIP++ uses 512; 256 bounds activation memory on Jetsons).
        device: where the cached embeddings live and are returned.
        show_progress: tqdm bar over chunks when encoding.
        assembled_lru: how many assembled `[S, T, D]` results to keep; switching back to one of them costs no copy
            (a ROS node toggling between two vocabularies). 0 disables it.

    Returned tensors may be shared with the cache: treat them as read-only.
    """

    def __init__(
        self,
        encode_fn: Callable[[List[str]], Tensor],
        fingerprint: str,
        *,
        cache_dir: Optional[Union[str, Path]] = None,
        chunk_size: int = 256,
        device: Union[str, torch.device] = "cpu",
        show_progress: bool = False,
        assembled_lru: int = 2,
    ) -> None:
        if not callable(encode_fn):
            raise TypeError("encode_fn must be callable: list[str] -> Tensor [N, D]")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError("fingerprint must be a non-empty string identifying the text model weights")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._encode_fn = encode_fn
        self.fingerprint = fingerprint
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self.show_progress = show_progress
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._stores: Dict[str, _TemplateStore] = {}
        self._assembled: "OrderedDict[Tuple[Vocabulary, str], Tuple[Tensor, Tensor]]" = OrderedDict()
        self._assembled_lru = max(0, int(assembled_lru))
        self._lock = threading.Lock()
        self._stats = {"sentences_encoded": 0, "phrases_encoded": 0, "encode_calls": 0,
                       "memory_hits": 0, "disk_hits": 0, "disk_files_discarded": 0}

    # ---------------------------------------------------------------- public
    @property
    def stats(self) -> dict:
        """Counters: sentences_encoded, phrases_encoded, encode_calls, memory_hits / disk_hits (phrases served
        from memory / first served after loading from disk), disk_files_discarded (invalid files deleted)."""
        return dict(self._stats)

    @property
    def model_dir(self) -> Optional[Path]:
        """`cache_dir/<fingerprint[:16]>` (a SHA-256 prefix of the fingerprint if it is not path-safe)."""
        if self.cache_dir is None:
            return None
        head = self.fingerprint[:16]
        if not _SAFE_DIR.match(head) or head in (".", ".."):
            head = hashlib.sha256(self.fingerprint.encode("utf-8")).hexdigest()[:16]
        return self.cache_dir / head

    def cache_file(self, template_set: str) -> Optional[Path]:
        d = self.model_dir
        return None if d is None else d / f"{template_set}.safetensors"

    def embed(self, vocabulary: Vocabulary, template_set: str) -> VocabularyEmbeddings:
        """Embeddings of `vocabulary.phrases` x `TEMPLATES[template_set]`; encodes only phrases not cached yet."""
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"vocabulary must be a Vocabulary, got {type(vocabulary).__name__}")
        templates = get_templates(template_set)
        key = (vocabulary, template_set)
        with self._lock:
            hit = self._assembled.get(key)
            if hit is not None:
                self._assembled.move_to_end(key)
                self._stats["memory_hits"] += len(set(vocabulary.phrases))
                return VocabularyEmbeddings(hit[0], hit[1], len(vocabulary), template_set)
            store = self._stores.get(template_set)
            if store is None:
                store = self._load_store(template_set, templates)
                self._stores[template_set] = store
            index = store.index
            missing = list(dict.fromkeys(p for p in vocabulary.phrases if p not in index))
            if missing:
                store.append(missing, self._encode(missing, templates))
                try:
                    self._save_store(template_set, store)
                except OSError as exc:  # read-only or full disk: keep working from memory
                    LOGGER.warning("text cache %s not written: %s", self.cache_file(template_set), exc)
            rows = [index[p] for p in vocabulary.phrases]
            self._count_hits(store, rows, len(missing))
            rows_t = torch.tensor(rows, dtype=torch.long, device=self.device)
            text = store.emb.index_select(0, rows_t)
            syn = torch.from_numpy(vocabulary.synonym_class_index.copy()).to(self.device)
            if self._assembled_lru:
                self._assembled[key] = (text, syn)
                while len(self._assembled) > self._assembled_lru:
                    self._assembled.popitem(last=False)
        return VocabularyEmbeddings(text, syn, len(vocabulary), template_set)

    def clear_memory(self) -> None:
        """Drop the in-memory stores (the disk files stay)."""
        with self._lock:
            self._stores.clear()
            self._assembled.clear()

    # ---------------------------------------------------------------- internals
    def _count_hits(self, store: _TemplateStore, rows: List[int], n_new: int) -> None:
        unique = set(rows)
        disk = unique & store.unserved_from_disk if store.unserved_from_disk else set()
        store.unserved_from_disk -= disk
        self._stats["disk_hits"] += len(disk)
        self._stats["memory_hits"] += len(unique) - len(disk) - n_new

    def _encode(self, phrases: List[str], templates: Tuple[str, ...]) -> Tensor:
        """[M, T, D] float32 on self.device, L2-normalised per sentence."""
        sentences = [t.format(p) for p in phrases for t in templates]
        starts = range(0, len(sentences), self.chunk_size)
        if self.show_progress:
            try:
                from tqdm import tqdm

                starts = tqdm(starts, desc=f"encoding {len(sentences)} sentences", unit="chunk")
            except ImportError:  # tqdm is optional
                LOGGER.info("encoding %d sentences", len(sentences))
        outs = []
        with torch.no_grad():
            for s in starts:
                chunk = sentences[s:s + self.chunk_size]
                feats = self._encode_fn(chunk)
                self._stats["encode_calls"] += 1
                if not isinstance(feats, Tensor) or feats.ndim != 2 or feats.shape[0] != len(chunk):
                    shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                    raise ValueError(f"encode_fn returned {shape} for {len(chunk)} sentences; expected [N, D]")
                outs.append(feats.detach().to(device=self.device, dtype=torch.float32))
        emb = torch.cat(outs, dim=0)
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self._stats["sentences_encoded"] += len(sentences)
        self._stats["phrases_encoded"] += len(phrases)
        return emb.reshape(len(phrases), len(templates), -1).contiguous()

    # -- disk
    @staticmethod
    def _checksum(emb_cpu: Tensor, phrases_json: str) -> str:
        h = hashlib.sha256()
        h.update(phrases_json.encode("utf-8"))
        h.update(emb_cpu.contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _read_file(self, path: Path, templates: Tuple[str, ...]) -> Tuple[List[str], Tensor]:
        """Parse and verify one cache file; raises ValueError (with the reason) on any mismatch."""
        from safetensors.torch import load as st_load

        data = path.read_bytes()
        if len(data) < 8:
            raise ValueError("file shorter than the safetensors header length")
        (n,) = struct.unpack("<Q", data[:8])
        if n > len(data) - 8:
            raise ValueError("header length exceeds the file size (truncated)")
        try:
            header = json.loads(data[8:8 + n].decode("utf-8"))
            meta = header.get("__metadata__") or {}
            tensors = st_load(data)
        except Exception as exc:  # safetensors raises its own error types; any of them means unreadable
            raise ValueError(f"unreadable safetensors file ({type(exc).__name__}: {exc})") from exc
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise ValueError(f"format version {meta.get('format_version')!r} != {CACHE_FORMAT_VERSION!r}")
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError("made with another text model (fingerprint differs)")
        if json.loads(meta.get("templates", "null")) != list(templates):
            raise ValueError("template strings differ")
        phrases_json = meta.get("phrases", "")
        phrases = json.loads(phrases_json)
        emb = tensors.get("embeddings")
        if emb is None or emb.dtype != torch.float32 or emb.ndim != 3:
            raise ValueError("missing or malformed 'embeddings' tensor")
        if not isinstance(phrases, list) or emb.shape[0] != len(phrases) or emb.shape[1] != len(templates):
            raise ValueError(
                f"shape {tuple(emb.shape)} does not match {len(phrases)} phrases x {len(templates)} templates")
        if len(set(phrases)) != len(phrases):
            raise ValueError("duplicate phrases")
        if self._checksum(emb, phrases_json) != meta.get("checksum"):
            raise ValueError("checksum mismatch")
        return phrases, emb

    def _discard(self, path: Path, reason: str) -> None:
        LOGGER.warning("text cache %s discarded and rebuilt: %s", path, reason)
        self._stats["disk_files_discarded"] += 1
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _load_store(self, template_set: str, templates: Tuple[str, ...]) -> _TemplateStore:
        store = _TemplateStore(templates)
        path = self.cache_file(template_set)
        if path is None or not path.is_file():
            return store
        try:
            phrases, emb = self._read_file(path, templates)
        except _BAD_FILE as exc:
            self._discard(path, f"{type(exc).__name__}: {exc}")
            return store
        if phrases:
            store.append(phrases, emb.to(self.device))
            store.unserved_from_disk = set(range(len(phrases)))
        LOGGER.debug("text cache %s: %d phrases loaded", path, len(phrases))
        return store

    def _save_store(self, template_set: str, store: _TemplateStore) -> None:
        """Merge phrases another process may have written, then write atomically (temp file + os.replace)."""
        from safetensors.torch import save_file

        path = self.cache_file(template_set)
        if path is None:
            return
        if path.is_file():  # merge: rows on disk that this instance has not seen are free hits
            try:
                phrases, emb = self._read_file(path, store.templates)
                new = [i for i, p in enumerate(phrases) if p not in store.index]
                if new and emb.shape[2] == store.emb.shape[2]:
                    base = len(store.phrases)
                    store.append([phrases[i] for i in new], emb[new].to(self.device))
                    store.unserved_from_disk |= set(range(base, base + len(new)))
            except _BAD_FILE as exc:
                self._discard(path, f"{type(exc).__name__}: {exc}")
        emb_cpu = store.emb.detach().to("cpu").contiguous()
        phrases_json = json.dumps(store.phrases, ensure_ascii=False)
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "template_set": template_set,
            "templates": json.dumps(list(store.templates), ensure_ascii=False),
            "phrases": phrases_json,
            "checksum": self._checksum(emb_cpu, phrases_json),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{template_set}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({"embeddings": emb_cpu}, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
