"""Open vocabularies: class names with synonyms and stuff flags, and their overlap with a generator's training classes.

A `Vocabulary` is an immutable, validated list of `VocabularyEntry` (synonyms, first one = display label). It travels as
an argument (house rule 2: no dataset catalogs). The flattened synonym list (`phrases`) with its class index
(`synonym_class_index`) is what the text tower encodes; class logits are the max over a class's synonyms.

Seen/unseen and the generator's train->test look-up table follow corrections.md item 10 (MaskCLIP++
`category_overlapping_mask` / `_get_train2test_lut`): overlap means one exact, whitespace-stripped name in common.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .templates import TEMPLATES

__all__ = [
    "VocabularyError",
    "VocabularyEntry",
    "Vocabulary",
    "seen_classes",
    "train_to_test_lut",
    "DEFAULT_MAX_CLASSES",
    "MAX_NAME_CHARS",
]

DEFAULT_MAX_CLASSES = 1000
# CLIP's context is 77 BPE tokens including the template; 200 characters keeps a name well inside it for the
# longest t14/t80 templates (a token is >= 1 character, about 4 on average for English).
MAX_NAME_CHARS = 200
STUFF_PREFIX = "stuff:"

PathLike = Union[str, Path]


class VocabularyError(ValueError):
    """A vocabulary is empty, malformed or too large; the message names the offending class."""


@dataclass(frozen=True)
class VocabularyEntry:
    """One class: `names` are its synonyms (the first is the display label), `is_stuff` its panoptic kind.

    `color_rgb` (0-255) and `dataset_id` (the benchmark's own category id) are optional metadata carried from the
    benchmark tables for overlays and evaluation; they never change the text embeddings.
    """

    names: Tuple[str, ...]
    is_stuff: bool = False
    color_rgb: Optional[Tuple[int, int, int]] = None
    dataset_id: Optional[int] = None

    @property
    def label(self) -> str:
        return self.names[0]

    @property
    def is_thing(self) -> bool:
        return not self.is_stuff


def _clean_names(names: Any, where: str) -> Tuple[str, ...]:
    """Strip, drop in-class duplicates (keeping first occurrence) and validate one class's synonyms."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise VocabularyError(f"{where}: names must be a list of strings, got {type(names).__name__}")
    out: List[str] = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise VocabularyError(f"{where}: name #{i} is {type(name).__name__} {name!r}, expected a string")
        name = name.strip()
        if not name:
            raise VocabularyError(f"{where}: name #{i} is empty")
        if len(name) > MAX_NAME_CHARS:
            raise VocabularyError(
                f"{where}: name #{i} has {len(name)} characters (max {MAX_NAME_CHARS}, CLIP reads 77 tokens)")
        if name not in out:  # e.g. PASCAL VOC background lists "bag" twice; a repeat changes no max over synonyms
            out.append(name)
    if not out:
        raise VocabularyError(f"{where}: no names")
    return tuple(out)


def _split_class_string(text: Any, where: str) -> Tuple[Tuple[str, ...], bool]:
    """`"stuff:wall,walls"` -> (("wall", "walls"), True)."""
    if not isinstance(text, str):
        raise VocabularyError(f"{where}: expected a string 'name,synonym,...', got {type(text).__name__} {text!r}")
    body = text.strip()
    is_stuff = body.lower().startswith(STUFF_PREFIX)
    if is_stuff:
        body = body[len(STUFF_PREFIX):]
    return _clean_names(body.split(","), where), is_stuff


class Vocabulary:
    """An immutable, validated class list.

    Args:
        entries: the classes, in output order (class index = position).
        templates: optional template-set name suggested by a vocabulary file (`t1`, `t14`, `t80`); the model card's
            set wins whenever PSM weights are loaded (corrections.md item 8).
        max_classes: upper bound on the number of classes (memory of the [Q, K] heads and text cache).
        allow_duplicate_labels: ADE20K-847 has distinct classes sharing a display label (two `bag`s); user
            vocabularies should not, since a label then names two classes.
    """

    __slots__ = ("_entries", "_templates", "_labels", "_names", "_is_thing", "_phrases", "_syn_idx", "_hash")

    def __init__(
        self,
        entries: Iterable[VocabularyEntry],
        *,
        templates: Optional[str] = None,
        max_classes: int = DEFAULT_MAX_CLASSES,
        allow_duplicate_labels: bool = False,
    ) -> None:
        cleaned: List[VocabularyEntry] = []
        for i, e in enumerate(entries):
            if not isinstance(e, VocabularyEntry):
                raise VocabularyError(f"class #{i}: expected VocabularyEntry, got {type(e).__name__}")
            names = _clean_names(e.names, f"class #{i}")
            color = tuple(int(c) for c in e.color_rgb) if e.color_rgb is not None else None
            cleaned.append(VocabularyEntry(names, bool(e.is_stuff), color, e.dataset_id))
        if not cleaned:
            raise VocabularyError("vocabulary is empty: give at least one class")
        if len(cleaned) > max_classes:
            raise VocabularyError(f"vocabulary has {len(cleaned)} classes, more than max_classes={max_classes}")
        if templates is not None and templates not in TEMPLATES:
            raise VocabularyError(f"unknown template set {templates!r}; known: {sorted(TEMPLATES)}")
        if not allow_duplicate_labels:
            first_seen: dict = {}
            for i, e in enumerate(cleaned):
                j = first_seen.setdefault(e.label, i)
                if j != i:
                    raise VocabularyError(
                        f"duplicate label {e.label!r} (classes #{j} and #{i}); merge them into one class with "
                        f"synonyms, or pass allow_duplicate_labels=True for benchmark tables such as ADE20K-847")
        self._entries: Tuple[VocabularyEntry, ...] = tuple(cleaned)
        self._templates = templates
        self._labels = tuple(e.label for e in cleaned)
        self._names = tuple(e.names for e in cleaned)
        is_thing = np.array([not e.is_stuff for e in cleaned], dtype=bool)
        is_thing.flags.writeable = False
        self._is_thing = is_thing
        self._phrases = tuple(n for e in cleaned for n in e.names)
        syn = np.repeat(np.arange(len(cleaned), dtype=np.int64), [len(e.names) for e in cleaned])
        syn.flags.writeable = False
        self._syn_idx = syn
        self._hash = hash((self._entries, self._templates))

    # ---------------------------------------------------------------- accessors
    @property
    def entries(self) -> Tuple[VocabularyEntry, ...]:
        return self._entries

    @property
    def labels(self) -> Tuple[str, ...]:
        """Display label per class (first synonym)."""
        return self._labels

    @property
    def names(self) -> Tuple[Tuple[str, ...], ...]:
        """All synonyms per class."""
        return self._names

    @property
    def is_thing(self) -> np.ndarray:
        """[K] bool, read-only."""
        return self._is_thing

    @property
    def is_stuff(self) -> np.ndarray:
        return ~self._is_thing

    @property
    def phrases(self) -> Tuple[str, ...]:
        """All synonyms flattened in class order ([S]); the text tower encodes each with every template."""
        return self._phrases

    @property
    def synonym_class_index(self) -> np.ndarray:
        """[S] int64, read-only: class index of each phrase (non-decreasing)."""
        return self._syn_idx

    @property
    def templates(self) -> Optional[str]:
        return self._templates

    @property
    def num_classes(self) -> int:
        return len(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[VocabularyEntry]:
        return iter(self._entries)

    def __getitem__(self, index: int) -> VocabularyEntry:
        return self._entries[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._entries == other._entries and self._templates == other._templates

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        head = ", ".join(self._labels[:5]) + (", ..." if len(self) > 5 else "")
        return f"Vocabulary({len(self)} classes, {len(self._phrases)} phrases: {head})"

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_strings(
        cls,
        classes: Sequence[str],
        stuff_classes: Iterable[str] = (),
        *,
        templates: Optional[str] = None,
        max_classes: int = DEFAULT_MAX_CLASSES,
        allow_duplicate_labels: bool = False,
    ) -> "Vocabulary":
        """Build from `["person,child,man", "stuff:sky,clouds", ...]`.

        Each string is a class, its comma-separated synonyms the names (first = label); a `stuff:` prefix marks a
        stuff class. `stuff_classes` lists further labels to mark as stuff (each must be a label in `classes`).
        """
        if isinstance(classes, str) or not isinstance(classes, (list, tuple)):
            raise VocabularyError(f"classes must be a list of strings, got {type(classes).__name__}")
        stuff_set = set()
        for s in stuff_classes:
            if not isinstance(s, str):
                raise VocabularyError(f"stuff_classes: expected strings, got {type(s).__name__} {s!r}")
            stuff_set.add(s.strip())
        entries = []
        for i, text in enumerate(classes):
            names, is_stuff = _split_class_string(text, f"class #{i}")
            entries.append(VocabularyEntry(names, is_stuff or names[0] in stuff_set))
        vocab = cls(entries, templates=templates, max_classes=max_classes,
                    allow_duplicate_labels=allow_duplicate_labels)
        unknown = sorted(stuff_set - set(vocab.labels))
        if unknown:
            raise VocabularyError(f"stuff_classes {unknown} are not labels of the vocabulary")
        return vocab

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        max_classes: int = DEFAULT_MAX_CLASSES,
        allow_duplicate_labels: bool = False,
        where: str = "vocabulary",
    ) -> "Vocabulary":
        """Build from the YAML layout
        `{classes: [{names: [...], stuff: bool, color: [r, g, b], id: int}, ...], templates: t14}`.

        A class may also be a plain string `"stuff:name,synonym"`. Unknown keys are errors (house rule 1).
        """
        if not isinstance(data, Mapping):
            raise VocabularyError(f"{where}: top level must be a mapping with 'classes', got {type(data).__name__}")
        unknown = sorted(set(data) - {"classes", "templates"})
        if unknown:
            raise VocabularyError(f"{where}: unknown key(s) {unknown}; allowed: ['classes', 'templates']")
        if "classes" not in data:
            raise VocabularyError(f"{where}: missing 'classes'")
        classes = data["classes"]
        if not isinstance(classes, list):
            raise VocabularyError(f"{where}: 'classes' must be a list, got {type(classes).__name__}")
        templates = data.get("templates")
        if templates is not None and not isinstance(templates, str):
            raise VocabularyError(f"{where}: 'templates' must be a template-set name such as 't14'")
        entries = []
        for i, item in enumerate(classes):
            w = f"{where}: class #{i}"
            if isinstance(item, str):
                names, is_stuff = _split_class_string(item, w)
                entries.append(VocabularyEntry(names, is_stuff))
                continue
            if not isinstance(item, Mapping):
                raise VocabularyError(f"{w}: expected a mapping or a string, got {type(item).__name__}")
            bad = sorted(set(item) - {"names", "stuff", "color", "id"})
            if bad:
                raise VocabularyError(f"{w}: unknown key(s) {bad}; allowed: ['color', 'id', 'names', 'stuff']")
            if "names" not in item:
                raise VocabularyError(f"{w}: missing 'names'")
            is_stuff = item.get("stuff", False)
            if not isinstance(is_stuff, bool):
                raise VocabularyError(f"{w}: 'stuff' must be true or false, got {is_stuff!r}")
            color = item.get("color")
            if color is not None:
                if (not isinstance(color, (list, tuple)) or len(color) != 3
                        or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
                    raise VocabularyError(f"{w}: 'color' must be [r, g, b] integers in 0..255, got {color!r}")
                color = tuple(color)
            dataset_id = item.get("id")
            if dataset_id is not None and (not isinstance(dataset_id, int) or isinstance(dataset_id, bool)):
                raise VocabularyError(f"{w}: 'id' must be an integer, got {dataset_id!r}")
            entries.append(VocabularyEntry(_clean_names(item["names"], w), is_stuff, color, dataset_id))
        return cls(entries, templates=templates, max_classes=max_classes,
                   allow_duplicate_labels=allow_duplicate_labels)

    @classmethod
    def from_yaml(cls, path: PathLike, *, max_classes: int = DEFAULT_MAX_CLASSES,
                  allow_duplicate_labels: bool = False) -> "Vocabulary":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise VocabularyError(f"vocabulary file not found: {path}")
        try:
            with path.open("r", encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise VocabularyError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data if data is not None else {}, max_classes=max_classes,
                             allow_duplicate_labels=allow_duplicate_labels, where=str(path))

    @classmethod
    def from_tsv(cls, path: PathLike, *, max_classes: int = DEFAULT_MAX_CLASSES,
                 allow_duplicate_labels: bool = False) -> "Vocabulary":
        """Read a benchmark table (`id  isthing  color_rgb  names`, shared/data/vocabularies/README.md).

        An empty `isthing` (semantic-only benchmarks) makes the class stuff: every class then merges into one
        segment per class, which is the semantic reading of a panoptic map.
        """
        path = Path(path)
        if not path.is_file():
            raise VocabularyError(f"vocabulary file not found: {path}")
        with path.open("r", encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        header = ["id", "isthing", "color_rgb", "names"]
        if not rows or [h.strip() for h in rows[0]] != header:
            raise VocabularyError(f"{path}: header must be {header}, got {rows[0] if rows else 'nothing'}")
        entries = []
        for line_no, row in enumerate(rows[1:], start=2):
            if not row or all(not c.strip() for c in row):
                continue
            w = f"{path}:{line_no}"
            if len(row) != 4:
                raise VocabularyError(f"{w}: expected 4 tab-separated fields, got {len(row)}")
            id_s, thing_s, color_s, names_s = (c.strip() for c in row)
            try:
                dataset_id = int(id_s) if id_s else None
                color = tuple(int(c) for c in color_s.split(",")) if color_s else None
            except ValueError as exc:
                raise VocabularyError(f"{w}: bad id or color: {exc}") from exc
            if color is not None and len(color) != 3:
                raise VocabularyError(f"{w}: color_rgb must be r,g,b, got {color_s!r}")
            if thing_s not in ("", "0", "1"):
                raise VocabularyError(f"{w}: isthing must be 0, 1 or empty, got {thing_s!r}")
            entries.append(VocabularyEntry(_clean_names(names_s.split(","), w), thing_s != "1", color, dataset_id))
        return cls(entries, max_classes=max_classes, allow_duplicate_labels=allow_duplicate_labels)

    @classmethod
    def from_any(cls, obj: Any, *, max_classes: int = DEFAULT_MAX_CLASSES) -> "Vocabulary":
        """Accept a `Vocabulary`, a `.yaml`/`.yml`/`.tsv` path, a mapping in the YAML layout, or a list of class
        strings / `VocabularyEntry`."""
        if isinstance(obj, Vocabulary):
            return obj
        if isinstance(obj, (str, Path)):
            path = Path(obj)
            suffix = path.suffix.lower()
            if suffix in (".yaml", ".yml"):
                return cls.from_yaml(path, max_classes=max_classes)
            if suffix == ".tsv":
                return cls.from_tsv(path, max_classes=max_classes)
            raise VocabularyError(
                f"{str(obj)!r}: a vocabulary path must end in .yaml, .yml or .tsv; for class names pass a list")
        if isinstance(obj, Mapping):
            return cls.from_dict(obj, max_classes=max_classes)
        if isinstance(obj, (list, tuple)):
            if obj and all(isinstance(e, VocabularyEntry) for e in obj):
                return cls(obj, max_classes=max_classes)
            return cls.from_strings(list(obj), max_classes=max_classes)
        raise VocabularyError(f"cannot build a Vocabulary from {type(obj).__name__}")

    # ---------------------------------------------------------------- export
    def to_dict(self) -> dict:
        """The YAML layout read by `from_dict` (round-trips)."""
        classes = []
        for e in self._entries:
            d: dict = {"names": list(e.names), "stuff": e.is_stuff}
            if e.color_rgb is not None:
                d["color"] = list(e.color_rgb)
            if e.dataset_id is not None:
                d["id"] = e.dataset_id
            classes.append(d)
        out: dict = {"classes": classes}
        if self._templates is not None:
            out["templates"] = self._templates
        return out


# -------------------------------------------------------------------- seen / unseen, train -> test LUT
TrainNames = Union[Vocabulary, Sequence[Sequence[str]], Sequence[str]]


def _train_name_sets(train_names: TrainNames) -> List[Tuple[str, ...]]:
    """Normalise training classes to a list of synonym tuples; a plain string is `"name,synonym,..."`."""
    if isinstance(train_names, Vocabulary):
        return list(train_names.names)
    if isinstance(train_names, str) or not isinstance(train_names, Sequence):
        raise VocabularyError(
            f"train_names must be a Vocabulary or a list of classes, got {type(train_names).__name__}")
    out = []
    for i, cls_names in enumerate(train_names):
        if isinstance(cls_names, str):
            out.append(_split_class_string(cls_names, f"train class #{i}")[0])
        else:
            out.append(_clean_names(list(cls_names), f"train class #{i}"))
    if not out:
        raise VocabularyError("train_names is empty")
    return out


def seen_classes(test_vocab: Vocabulary, train_names: TrainNames) -> np.ndarray:
    """[K_test] bool: a test class is seen when any of its names equals any name of any training class.

    Seen is measured against the **mask generator's** training vocabulary only (corrections.md item 10).
    """
    train_set = {n for names in _train_name_sets(train_names) for n in names}
    return np.array([not train_set.isdisjoint(names) for names in test_vocab.names], dtype=bool)


def train_to_test_lut(test_vocab: Vocabulary, train_names: TrainNames) -> np.ndarray:
    """[K_train + 1] int64: each training class -> the first test class (in test order) sharing a name with it.

    Unmatched training classes and the trailing void slot map to `K_test`, an extra column that
    `postprocess.map_generator_logits` drops (MaskCLIP++ `_get_train2test_lut`).
    """
    train = _train_name_sets(train_names)
    k_test = len(test_vocab)
    first_class: dict = {}
    for k, names in enumerate(test_vocab.names):
        for n in names:
            first_class.setdefault(n, k)
    lut = np.full(len(train) + 1, k_test, dtype=np.int64)
    for j, names in enumerate(train):
        hits = [first_class[n] for n in names if n in first_class]
        if hits:
            lut[j] = min(hits)
    return lut
