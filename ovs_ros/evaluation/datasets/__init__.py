"""Readers of the evaluation layouts the references prepare; one module per family, `DATASETS` by name."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Union

from ovs_ros.vocabulary import Vocabulary

from .ade20k import ade20k_150, ade20k_150_panoptic, ade20k_847
from .base import DatasetLayoutError, EvalDataset, EvalSample, id2rgb, read_label_map, read_panoptic_png
from .cityscapes import cityscapes_panoptic
from .coco import coco_panoptic, coco_stuff_171, coco_stuff_split
from .mapillary import mapillary_vistas_panoptic
from .pascal import pascal_context_59, pascal_context_459, pascal_voc_20, pascal_voc_21

DATASETS: Dict[str, Callable[..., EvalDataset]] = {
    "ade20k_150_panoptic": ade20k_150_panoptic,
    "ade20k_150": ade20k_150,
    "ade20k_847": ade20k_847,
    "cityscapes_panoptic": cityscapes_panoptic,
    "coco_panoptic": coco_panoptic,
    "coco_stuff_171": coco_stuff_171,
    "mapillary_vistas_panoptic": mapillary_vistas_panoptic,
    "pascal_context_59": pascal_context_59,
    "pascal_context_459": pascal_context_459,
    "pascal_voc_20": pascal_voc_20,
    "pascal_voc_21": pascal_voc_21,
}


def load_dataset(name: str, root: Union[str, Path],
                 vocabulary: Optional[Union[str, Path, Vocabulary]] = None) -> EvalDataset:
    """The named split under `root` (the references' `$DETECTRON2_DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, vocabulary)


__all__ = ["DATASETS", "coco_stuff_split", "DatasetLayoutError", "EvalDataset", "EvalSample", "id2rgb", "load_dataset",
           "read_label_map", "read_panoptic_png"]
