"""What every evaluation reader returns: an `EvalDataset` of `EvalSample`s, plus the file formats they share.

Readers follow the layouts the references prepare (MaskCLIP++ / FC-CLIP `datasets/prepare_*.py` and
`register_*.py`) under one root (`$DETECTRON2_DATASETS` there): semantic labels are PNG (8-bit, ignore 255) or 16-bit
TIFF (ignore 65535) whose values already are class indices in the benchmark's order; panoptic labels are COCO-format
PNG (`id = R + 256 G + 256^2 B`) with a json of segments whose `category_id` the reader maps to a class index through
the vocabulary's dataset ids. Images are decoded as detectron2's `read_image` does (EXIF orientation applied, RGB).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ovs_ros.evaluation.panoptic_quality import PanopticSegment
from ovs_ros.vocabulary import Vocabulary

PathLike = Union[str, Path]


class DatasetLayoutError(FileNotFoundError):
    """A dataset root does not hold the layout a reader expects; the message names the missing path."""


@dataclass(frozen=True)
class EvalSample:
    """One evaluation image and its ground truth (paths; loaded on demand)."""

    image_id: str
    image_path: Path
    semantic_path: Optional[Path] = None  # class-index PNG/TIF
    panoptic_path: Optional[Path] = None  # COCO-format RGB id PNG
    segments: Optional[Tuple[PanopticSegment, ...]] = None  # categories already class indices

    def load_image(self) -> np.ndarray:
        """HxWx3 uint8 RGB, EXIF orientation applied (detectron2 `read_image`)."""
        from PIL import Image, ImageOps

        with Image.open(self.image_path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()

    def load_semantic(self) -> np.ndarray:
        """[H, W] int64 class indices with the dataset's ignore label."""
        if self.semantic_path is None:
            raise ValueError(f"{self.image_id}: this dataset has no semantic ground truth")
        return read_label_map(self.semantic_path)

    def load_panoptic(self) -> np.ndarray:
        """[H, W] int64 segment ids (0 = void)."""
        if self.panoptic_path is None:
            raise ValueError(f"{self.image_id}: this dataset has no panoptic ground truth")
        return read_panoptic_png(self.panoptic_path)


@dataclass(frozen=True)
class EvalDataset:
    """A named evaluation split: its vocabulary (class order = label values), samples and metric settings."""

    name: str
    vocabulary: Vocabulary
    samples: Tuple[EvalSample, ...]
    ignore_label: int = 255
    has_semantic: bool = True
    has_panoptic: bool = False
    is_thing: Optional[Tuple[bool, ...]] = None  # per class, for PQ averaging (from the panoptic json)
    instances_json: Optional[Path] = None  # where the reference keeps COCO-format instance annotations (mask AP)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def has_instances(self) -> bool:
        """Whether mask AP can be measured: the split has instance annotations and the file is there."""
        return self.instances_json is not None and self.instances_json.is_file()


def read_label_map(path: PathLike) -> np.ndarray:
    """A semantic label file as int64 (`np.array(Image.open(f), dtype=int)`, as detectron2 loads it)."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.array(img)
    if arr.ndim != 2:
        raise ValueError(f"{path}: a semantic label map must be single-channel, got shape {arr.shape}")
    return arr.astype(np.int64)


def read_panoptic_png(path: PathLike) -> np.ndarray:
    """panopticapi `rgb2id` of a COCO-format panoptic PNG."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = np.array(img.convert("RGB"), dtype=np.uint32)
    return (rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]).astype(np.int64)


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """panopticapi `id2rgb`: [H, W] ids -> [H, W, 3] uint8 (for writing panoptic PNGs, e.g. in tests)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], axis=-1).astype(np.uint8)


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"{what} not found: {path}")
    return path


def dataset_id_to_index(vocabulary: Vocabulary) -> Dict[int, int]:
    """The vocabulary's benchmark category ids -> class index (its row order)."""
    mapping: Dict[int, int] = {}
    for index, entry in enumerate(vocabulary):
        if entry.dataset_id is None:
            raise ValueError(f"vocabulary class #{index} ({entry.label!r}) has no dataset id to map annotations by")
        if entry.dataset_id in mapping:
            raise ValueError(f"vocabulary dataset id {entry.dataset_id} is used twice")
        mapping[entry.dataset_id] = index
    return mapping


def semantic_pairs(image_dir: Path, gt_dir: Path, gt_ext: str, image_ext: str = "jpg") -> List[Tuple[str, Path, Path]]:
    """(stem, image, label) pairs as detectron2's `load_sem_seg`: label files sorted, each paired with the image of
    the same relative stem; a label without its image is an error (detectron2 asserts the counts match)."""
    require(image_dir, "image folder")
    require(gt_dir, "label folder")
    labels = sorted(p for p in gt_dir.rglob(f"*.{gt_ext}") if p.is_file())
    if not labels:
        raise DatasetLayoutError(f"no *.{gt_ext} label files under {gt_dir}")
    pairs = []
    for label in labels:
        rel = label.relative_to(gt_dir).with_suffix(f".{image_ext}")
        image = image_dir / rel
        if not image.is_file():
            raise DatasetLayoutError(f"label {label} has no image {image}")
        pairs.append((str(rel.with_suffix("")), image, label))
    return pairs


def semantic_dataset(name: str, vocabulary: Vocabulary, image_dir: Path, gt_dir: Path, gt_ext: str,
                     ignore_label: int) -> EvalDataset:
    samples = tuple(EvalSample(stem, image, semantic_path=label)
                    for stem, image, label in semantic_pairs(image_dir, gt_dir, gt_ext))
    return EvalDataset(name, vocabulary, samples, ignore_label=ignore_label, has_semantic=True, has_panoptic=False)


def coco_panoptic_dataset(name: str, vocabulary: Vocabulary, image_dir: Path, panoptic_dir: Path, panoptic_json: Path,
                          semantic_dir: Optional[Path], *, ignore_label: int = 255,
                          image_of: Optional[Callable[[dict], Path]] = None,
                          instances_json: Optional[Path] = None) -> EvalDataset:
    """A COCO-format panoptic split (detectron2 `load_coco_panoptic_json` / MaskCLIP++ `load_ade20k_panoptic_json`):
    image `<stem>.jpg` (or `image_of(annotation)`), label `file_name` in `panoptic_dir`, semantic label of the same
    name in `semantic_dir`."""
    require(image_dir, "image folder")
    require(panoptic_dir, "panoptic label folder")
    with open(require(panoptic_json, "panoptic json")) as f:
        info = json.load(f)
    to_index = dataset_id_to_index(vocabulary)
    is_thing = [False] * len(vocabulary)
    seen_categories = set()
    for cat in info.get("categories", []):
        if cat["id"] not in to_index:
            raise ValueError(f"{panoptic_json}: category {cat['id']} ({cat.get('name')!r}) is not in the vocabulary")
        is_thing[to_index[cat["id"]]] = bool(cat.get("isthing", 0) == 1)
        seen_categories.add(cat["id"])
    if seen_categories != set(to_index):
        missing = sorted(set(to_index) - seen_categories)[:8]
        raise ValueError(f"{panoptic_json}: the json lacks vocabulary categories {missing}")
    if semantic_dir is not None:
        require(semantic_dir, "semantic label folder")
    samples = []
    for ann in info["annotations"]:
        stem = Path(ann["file_name"]).stem
        segments = []
        for seg in ann["segments_info"]:
            if seg["category_id"] not in to_index:
                raise ValueError(f"{panoptic_json}: image {ann['image_id']} has unknown category {seg['category_id']}")
            segments.append(PanopticSegment(int(seg["id"]), to_index[seg["category_id"]], bool(seg.get("iscrowd", 0)),
                                            int(seg["area"]) if "area" in seg else None))
        samples.append(EvalSample(
            image_id=str(ann["image_id"]),
            image_path=image_dir / f"{stem}.jpg" if image_of is None else image_of(ann),
            panoptic_path=panoptic_dir / ann["file_name"],
            semantic_path=None if semantic_dir is None else semantic_dir / ann["file_name"],
            segments=tuple(segments),
        ))
    if not samples:
        raise DatasetLayoutError(f"{panoptic_json} lists no annotations")
    for path in (samples[0].image_path, samples[0].panoptic_path, samples[0].semantic_path):
        if path is not None:
            require(path, "first sample file")  # as the references assert on the first entry
    return EvalDataset(name, vocabulary, tuple(samples), ignore_label=ignore_label,
                       has_semantic=semantic_dir is not None,
                       has_panoptic=True, is_thing=tuple(is_thing),
                       instances_json=instances_json)


def load_vocabulary(name_or_path: Union[str, Path, Vocabulary, None], default: str) -> Vocabulary:
    """The benchmark vocabulary: a `Vocabulary`, a .yaml/.tsv path, or a name in `config/vocabularies/`."""
    if isinstance(name_or_path, Vocabulary):
        return name_or_path
    from ovs_ros.paths import resolve_data_path

    value = name_or_path if name_or_path is not None else default
    path = Path(value).expanduser()
    if not path.is_file():
        for suffix in (".yaml", ".tsv"):
            try:
                path = resolve_data_path(value, "config/vocabularies", suffix)
                break
            except FileNotFoundError:
                continue
        else:
            raise FileNotFoundError(
                f"vocabulary {value!r} not found in config/vocabularies/ (.yaml or .tsv); pass its file, e.g. the "
                f"benchmark table shared/data/vocabularies/{Path(str(value)).stem}.tsv")
    # benchmark tables may repeat a display label (ADE20K-847 has two 'pot' classes): classes stay distinct by index
    if path.suffix == ".tsv":
        return Vocabulary.from_tsv(path, max_classes=100000, allow_duplicate_labels=True)
    return Vocabulary.from_yaml(path, max_classes=100000, allow_duplicate_labels=True)


def check_vocabulary_size(vocabulary: Vocabulary, expected: int, name: str) -> None:
    if len(vocabulary) != expected:
        raise ValueError(f"{name} has {expected} classes, the vocabulary given has {len(vocabulary)}")


def sublist(vocabulary: Vocabulary, indices: Sequence[int]) -> Vocabulary:
    return Vocabulary([vocabulary[i] for i in indices], max_classes=100000, allow_duplicate_labels=True)
