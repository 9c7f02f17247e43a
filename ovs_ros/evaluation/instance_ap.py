"""Instance segmentation AP as MaskCLIP++ reports it: detectron2's `COCOEvaluator` (`instances_to_coco_json`,
`_evaluate_predictions_on_coco`) over pycocotools' `COCOeval` with iouType "segm".

Detections are COCO results: `{image_id, category_id (the dataset's id), segmentation (RLE, Fortran order as
detectron2 encodes it), score}`; no `bbox` (detectron2 drops it for segm, so `loadRes` derives area and box from the
mask). The reference evaluates every GT image; a partial run (`--limit`) is evaluated over the images it predicted.
Unlike PQ and mIoU, AP is not a sum over images: the detections are kept (per image, JSON-safe) and evaluated once.
Needs pycocotools (`pip install pycocotools`).
"""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np

AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _pycocotools():
    try:
        from pycocotools import mask as mask_util
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:  # a clear error, not a silent skip
        raise ImportError("instance AP needs pycocotools: pip install pycocotools") from exc
    return mask_util, COCO, COCOeval


def instances_to_coco_json(image_id, scores: np.ndarray, classes: np.ndarray, masks: np.ndarray,
                           dataset_id_of: Sequence[int]) -> List[dict]:
    """detectron2 `instances_to_coco_json` for masks: one result per detection, class index -> dataset id."""
    mask_util, _, _ = _pycocotools()
    out = []
    for score, cls, mask in zip(np.asarray(scores).tolist(), np.asarray(classes).tolist(), np.asarray(masks)):
        rle = mask_util.encode(np.array(mask[:, :, None], order="F", dtype="uint8"))[0]
        rle["counts"] = rle["counts"].decode("utf-8")
        out.append({"image_id": image_id, "category_id": int(dataset_id_of[int(cls)]), "segmentation": rle,
                    "score": float(score)})
    return out


def coco_instance_ap(gt_json: Union[str, Path], results: List[dict], image_ids: Sequence) -> Dict[str, float]:
    """Mask AP (percent) of `results` against the COCO-format instance annotations `gt_json`, over `image_ids`:
    {"AP", "AP50", "AP75", "APs", "APm", "APl"} (COCOeval `stats[:6]`), NaN without any detection (as detectron2)."""
    _, COCO, COCOeval = _pycocotools()
    if not results:
        return {k: float("nan") for k in AP_METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_json))
        results = copy.deepcopy(results)
        for r in results:
            r.pop("bbox", None)
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "segm")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {k: float(v * 100) if v >= 0 else float("nan") for k, v in zip(AP_METRICS, evaluator.stats[:6])}
