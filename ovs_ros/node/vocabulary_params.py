"""The vocabulary as the node's parameters: which source is in effect (the `vocabulary` list, a `vocabulary_file`,
or the segmenter config's), what a set-parameters request asks for, and why a request is refused.

A request is checked completely before anything changes, so `successful: true` always means "in effect" and a
refused request leaves the old vocabulary (and the frames) alone.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ovs_ros.node.params import VOCABULARY_PARAMS, check_choice
from ovs_ros.node.payloads import max_classes_for

SOURCES = ("vocabulary", "vocabulary_file", "config")


def vocabulary_strings(vocabulary: Any) -> List[str]:
    """The `vocabulary` parameter form of a Vocabulary ('name,synonym,...', 'stuff:' prefix): reading it back and
    setting it again gives the same classes."""
    return [("stuff:" if entry.is_stuff else "") + ",".join(entry.names) for entry in vocabulary.entries]


class VocabularyParameters:
    """Vocabulary state of the node between parameter requests (not the embeddings: the Segmenter keeps those)."""

    def __init__(self, get: Callable[[str], Any]) -> None:
        self._get = get
        self.source = "config"
        if get("vocabulary"):
            self.source = "vocabulary"
        elif get("vocabulary_file"):
            self.source = "vocabulary_file"
        self.config_vocabulary: Any = None  # the segmenter config's, kept to return to it
        self.config_template_set: Optional[str] = None

    def request(self, params: Sequence[Any]) -> Tuple[Dict[str, Any], str, bool]:
        """(vocabulary parameter values after `params`, the source after them, whether the vocabulary must be
        rebuilt)."""
        values = {name: self._get(name) for name in VOCABULARY_PARAMS}
        source = self.source
        touches_vocab = False
        for p in params:
            if p.name not in VOCABULARY_PARAMS:
                continue
            touches_vocab = touches_vocab or p.name != "max_vocabulary_size"
            values[p.name] = p.value if p.value is not None else ([] if p.name in ("vocabulary", "stuff_classes")
                                                                  else "")
            if p.name == "vocabulary":
                source = "vocabulary"
            elif p.name == "vocabulary_file":
                source = "vocabulary_file" if p.value else "config"
        return values, source, touches_vocab

    def refusal(self, params: Sequence[Any], source: str, touches_vocab: bool, current_size: Optional[int]
                ) -> Optional[str]:
        """Why `params` must be refused before anything is applied, or None. Requests that would be silently
        ignored are refused too."""
        for p in params:
            reason = check_choice(p.name, p.value)
            if reason:
                return reason
            if p.name == "stuff_classes" and p.value and source != "vocabulary":
                where = (f"vocabulary_file {self._get('vocabulary_file')!r}" if source == "vocabulary_file"
                         else "the segmenter config")
                return (f"stuff_classes only applies to the 'vocabulary' parameter, but the active vocabulary comes "
                        f"from {where}; set vocabulary (with 'stuff:' entries, or together with stuff_classes)")
            if p.name == "max_vocabulary_size" and not touches_vocab and current_size is not None:
                if current_size > int(p.value):
                    return (f"max_vocabulary_size={p.value} is below the size of the current vocabulary "
                            f"({current_size} classes); set a smaller vocabulary first, or in the same request")
            if p.name == "semantic_encoding" and not touches_vocab and current_size is not None:
                if current_size > max_classes_for(p.value):
                    return (f"semantic_encoding={p.value} holds at most {max_classes_for(p.value)} classes; the "
                            f"current vocabulary has {current_size}")
        return None  # a new vocabulary's size is checked against the encoding in build()

    def build(self, values: Dict[str, Any], source: str, encoding: str) -> Tuple[Any, Optional[str]]:
        """(Vocabulary or None = the segmenter config's, template set or None = keep) for the given parameter
        values; raises ValueError with a user-facing reason."""
        from ovs_ros.paths import resolve_data_path
        from ovs_ros.vocabulary import Vocabulary

        max_classes = int(values["max_vocabulary_size"])
        templates = values["templates"] or None
        if source == "vocabulary":
            classes = list(values["vocabulary"] or [])
            if not classes:
                raise ValueError("vocabulary is empty; give at least one class (or set vocabulary_file)")
            self._check_size(len(classes), max_classes, encoding)
            vocab = Vocabulary.from_strings(classes, list(values["stuff_classes"] or []), max_classes=max_classes)
            return vocab, templates
        if source == "vocabulary_file":
            try:
                path = resolve_data_path(values["vocabulary_file"], "config/vocabularies")
            except (FileNotFoundError, OSError) as exc:
                raise ValueError(f"vocabulary_file: {exc}") from exc
            try:
                vocab = Vocabulary.from_yaml(path, max_classes=max_classes)
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"vocabulary_file {path}: cannot read it: {exc}") from exc
            self._check_size(len(vocab), max_classes, encoding)
            return vocab, templates
        if self.config_vocabulary is not None:
            self._check_size(len(self.config_vocabulary), max_classes, encoding, "the configured vocabulary")
        return self.config_vocabulary, templates

    @staticmethod
    def _check_size(size: int, max_classes: int, encoding: str, what: str = "vocabulary") -> None:
        if size > max_classes:
            raise ValueError(f"{what} has {size} classes, more than max_vocabulary_size={max_classes}")
        if size > max_classes_for(encoding):
            raise ValueError(f"{what} has {size} classes; semantic_encoding={encoding} holds at most "
                             f"{max_classes_for(encoding)} (use 16UC1 for more)")
