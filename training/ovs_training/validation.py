"""In-loop validation: classify the ground-truth masks of a held-out split, MaskCLIP++'s GT-mask accuracy.

MaskCLIP++ measures its classifier apart from any mask generator with `eval_mask_acc.sh`: `GTSegmentor` turns each
semantic GT map into one binary mask per class present (`np.unique` of the label map without the ignore label, in
ascending class order), the classifier scores those masks against the full test vocabulary (every synonym, max over
synonyms, fp32 text embeddings, ensemble off), `_mask_cls_inferece` takes the top-1 over the K classes (the void
column, if any, excluded) and `MaskAccEvaluator` adds (prediction, GT class) pairs into a confusion matrix.
Its `mMaskAcc` is the per-class accuracy averaged over the classes that occur as a GT mask (an absent class is NaN
and left out, never 0); `mMaskAcc(S)` / `(U)` split it by overlap of the test names with the training vocabulary
and exist only when both groups are non-empty. Under DDP the confusion matrices of the ranks are summed
(`all_gather`), exactly as the reference does, so every rank validates its shard and all get the same numbers.

What differs, deliberately: the image reaches CLIP by one bilinear resize (short side `input_short_side`, no
antialias, sizes floored, as the runtime's CLIP branch) straight from the file, where the reference first resizes to
the generator's 800 short side; masks follow the image (bilinear, zero padding: `ovs_ros.preprocess`). The overall
accuracy (correct masks / all GT masks) is an extra number the reference does not print.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ovs_ros.preprocess import ResizeSpec, masks_to_clip_frame, prepare_branch
from ovs_ros.text_cache import TextEmbeddingCache
from ovs_ros.vocabulary import Vocabulary, seen_classes

from .datasets import IGNORE_CLASS, SyntheticMaskDataset
from .distributed import gather_objects

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .validation_config import ValidationConfig

LOG = logging.getLogger(__name__)
SYNTHETIC_DEFAULT_IMAGES = 48
TAGS = {"mask_acc": "val/mask_acc", "mask_macc": "val/mask_macc", "mask_macc_seen": "val/mask_macc_seen",
        "mask_macc_unseen": "val/mask_macc_unseen"}


# ---------------------------------------------------------------------------------------------------- metric
class MaskAccuracyEvaluator:
    """MaskCLIP++ `MaskAccEvaluator`: a confusion matrix of (GT class, top-1 class) over GT masks.

    Args:
        num_classes: K, the validation vocabulary's size.
        seen: optional [K] bool, a class's names overlap the training vocabulary (gives `mask_macc_seen/unseen`).

    Masks whose target is negative (`IGNORE_CLASS`, batch padding) are not counted; a prediction outside [0, K) is
    an error (the reference's top-1 never picks void).
    """

    def __init__(self, num_classes: int, seen: Optional[Sequence[bool]] = None):
        self.num_classes = int(num_classes)
        self.seen = None if seen is None else np.asarray(seen, dtype=bool)
        if self.seen is not None and self.seen.shape != (self.num_classes,):
            raise ValueError(f"seen must have {self.num_classes} entries, got {self.seen.shape}")
        self.counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)  # [gt, pred]

    def update(self, pred: Tensor, target: Tensor) -> None:
        """`pred`, `target`: integer class ids of the same shape (any); targets < 0 are skipped."""
        pred_np = torch.as_tensor(pred).detach().cpu().numpy().reshape(-1).astype(np.int64)
        target_np = torch.as_tensor(target).detach().cpu().numpy().reshape(-1).astype(np.int64)
        if pred_np.shape != target_np.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")
        keep = target_np >= 0
        pred_np, target_np = pred_np[keep], target_np[keep]
        k = self.num_classes
        if ((pred_np < 0) | (pred_np >= k)).any() or (target_np >= k).any():
            raise ValueError(f"class ids must lie in [0, {k})")
        np.add.at(self.counts, (target_np, pred_np), 1)

    def add_counts(self, counts: np.ndarray) -> None:
        """Add another evaluator's counts (another rank's shard)."""
        self.counts += np.asarray(counts, dtype=np.int64)

    def compute(self) -> Dict[str, object]:
        """Percent, as the reference reports: `mask_macc` (= `mMaskAcc`), `mask_acc` (correct / all masks), the
        seen / unseen means where both groups exist, `per_class_acc` (NaN for classes without a GT mask),
        `num_masks` and `num_classes_present`."""
        tp = np.diag(self.counts).astype(float)
        pos_gt = self.counts.sum(1).astype(float)
        valid = pos_gt > 0
        acc = np.full(self.num_classes, np.nan)
        acc[valid] = tp[valid] / pos_gt[valid]

        def mean_over(sel: np.ndarray) -> float:
            return float(100 * acc[sel].mean()) if sel.any() else math.nan

        out: Dict[str, object] = {
            "mask_macc": mean_over(valid),
            "mask_acc": float(100 * tp.sum() / pos_gt.sum()) if pos_gt.sum() else math.nan,
        }
        if self.seen is not None and 0 < int(self.seen.sum()) < self.num_classes:
            out["mask_macc_seen"] = mean_over(valid & self.seen)
            out["mask_macc_unseen"] = mean_over(valid & ~self.seen)
        out["per_class_acc"] = (100 * acc).tolist()
        out["num_masks"] = int(pos_gt.sum())
        out["num_classes_present"] = int(valid.sum())
        return out


# ---------------------------------------------------------------------------------------------------- data
def semantic_to_gt_masks(label_map: np.ndarray, ignore_label: int, num_classes: int) -> Tuple[Tensor, Tensor]:
    """`GTSegmentor.generate_masks`: one bool mask per class present (ascending), the ignore label left out."""
    classes = np.unique(label_map)
    classes = classes[classes != ignore_label]
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"label values {classes.tolist()} outside [0, {num_classes}) and not ignore {ignore_label}")
    h, w = label_map.shape
    masks = (np.stack([label_map == c for c in classes]) if classes.size else np.zeros((0, h, w), dtype=bool))
    return torch.from_numpy(masks), torch.from_numpy(classes.astype(np.int64))


class ADE150GTMasks(Dataset):
    """ADE20K-150 val as GT masks: `ovs_ros.evaluation`'s `ade20k_150` reader (images/validation +
    annotations_detectron2/validation, ignore 255), each label map turned into per-class masks.

    Samples have the training form (`image` uint8 [3, H, W], `masks` bool [N, H, W], `class_ids` [N]); the class
    ids index `self.vocabulary`, the benchmark's (label value = class index), which the classifier is scored against.
    """

    def __init__(self, root: Union[str, Path], vocabulary: Optional[Union[str, Path, Vocabulary]] = None,
                 max_images: Optional[int] = None):
        from ovs_ros.evaluation.datasets import load_dataset

        self.eval_dataset = load_dataset("ade20k_150", root, vocabulary)
        samples = self.eval_dataset.samples
        self.samples = samples[:max_images] if max_images else samples
        self.vocabulary: Vocabulary = self.eval_dataset.vocabulary
        self.ignore_label = int(self.eval_dataset.ignore_label)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        sample = self.samples[index]
        rgb = sample.load_image()
        label = sample.load_semantic()
        if label.shape != rgb.shape[:2]:
            raise ValueError(f"{sample.image_id}: label {label.shape} and image {rgb.shape[:2]} differ in size")
        masks, class_ids = semantic_to_gt_masks(label, self.ignore_label, len(self.vocabulary))
        return {"image": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), "masks": masks, "class_ids": class_ids}


def build_validation_dataset(config: "TrainConfig") -> Optional[Dataset]:
    """The split `config.validation` names (None for kind none)."""
    val = config.validation
    if val.kind == "none":
        return None
    if val.kind == "synthetic":
        if val.seed == config.seed and config.data.kind == "synthetic":
            raise ValueError(f"validation.seed {val.seed} equals the training seed: the split would not be held out")
        return SyntheticMaskDataset(num_images=val.max_images or SYNTHETIC_DEFAULT_IMAGES,
                                    image_size=config.data.image_size, seed=val.seed)
    return ADE150GTMasks(val.root, val.vocabulary, val.max_images)


# ---------------------------------------------------------------------------------------------------- model
def vocabulary_text_embeddings(classifier: nn.Module, vocabulary: Vocabulary, template_set: str,
                               device: torch.device) -> Tensor:
    """`[S, T, D]` fp32 text embeddings of every synonym, outside autocast, through the runtime's cache (what the
    Segmenter scores masks against); encoded afresh per call, so a tuned text tower is seen as it is now."""
    cache = TextEmbeddingCache(lambda s: classifier.encode_text(classifier.tokenize(s).to(device)).float(),
                               classifier.text_fingerprint(), device=device)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        return cache.embed(vocabulary, template_set).text_embeddings.float()


def clip_frame(classifier: nn.Module, image: Tensor, masks: Tensor, short_side: int,
               device: torch.device) -> Tuple[Tensor, Tensor]:
    """uint8 `[3, H, W]` + bool `[N, H, W]` -> CLIP input `[1, 3, Hp, Wp]` and soft masks `[1, N, Hp, Wp]`."""
    spec = ResizeSpec(short_side=short_side, max_long_side=None, size_divisibility=classifier.size_divisibility,
                      antialias=False, floor_sizes=True)
    image_01 = image.to(device).unsqueeze(0).float().div_(255.0)
    branch = prepare_branch(image_01, spec, classifier.pixel_mean_01, classifier.pixel_std_01)
    return branch.pixel_values, masks_to_clip_frame(masks.to(device).unsqueeze(0).float(), branch)


def _batches(dataset: Dataset, indices: Sequence[int], batch_size: int) -> Iterator[List[Dict[str, Tensor]]]:
    for start in range(0, len(indices), batch_size):
        yield [dataset[i] for i in indices[start:start + batch_size]]


def _stack_group(group: List[Tuple[Tensor, Tensor, Tensor]]) -> Tuple[Tensor, Tensor, Tensor]:
    """Images of one padded size -> one batch; masks padded with empty masks of target `IGNORE_CLASS`."""
    q = max(m.shape[1] for _, m, _ in group)
    pixels = torch.cat([p for p, _, _ in group])
    masks = torch.cat([F.pad(m, (0, 0, 0, 0, 0, q - m.shape[1])) for _, m, _ in group])
    targets = torch.stack([F.pad(c.to(pixels.device), (0, q - c.shape[0]), value=IGNORE_CLASS)
                           for _, _, c in group])
    return pixels, masks, targets


def validate(model: nn.Module, dataset: Dataset, *, template_set: str, input_short_side: int,
             device: Union[str, torch.device] = "cpu", seen: Optional[Sequence[bool]] = None, batch_size: int = 8,
             max_images: Optional[int] = None, rank: int = 0, world_size: int = 1) -> Dict[str, object]:
    """GT-mask accuracy of `model` (a `MaskClassificationModel`) on `dataset`, in eval mode, without gradients.

    Each rank takes `indices[rank::world_size]`; the counts are summed over the ranks, so all of them return the
    metrics of the whole split. The model's training mode is restored afterwards; no RNG is drawn, so validating
    does not change the training run.
    """
    device = torch.device(device)
    vocabulary: Vocabulary = dataset.vocabulary
    k = len(vocabulary)
    evaluator = MaskAccuracyEvaluator(k, seen)
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    indices = list(range(rank, n, world_size))
    classifier = model.classifier
    was_training = model.training
    model.eval()
    try:
        text = vocabulary_text_embeddings(classifier, vocabulary, template_set, device)
        synonym_class_index = torch.from_numpy(vocabulary.synonym_class_index.copy()).to(device)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for samples in _batches(dataset, indices, batch_size):
                groups: Dict[tuple, List[Tuple[Tensor, Tensor, Tensor]]] = {}
                for s in samples:
                    if s["masks"].shape[0] == 0:  # nothing labelled: the reference skips the image
                        continue
                    pixels, masks = clip_frame(classifier, s["image"], s["masks"], input_short_side, device)
                    groups.setdefault(tuple(pixels.shape[-2:]), []).append((pixels, masks, s["class_ids"]))
                for pixels, masks, targets in map(_stack_group, groups.values()):
                    logits = model(pixels, masks, text, synonym_class_index, k)
                    evaluator.update(logits.argmax(-1), targets)
    finally:
        model.train(was_training)
    if world_size > 1:
        total = sum(gather_objects(evaluator.counts, world_size))
        evaluator.counts = np.asarray(total, dtype=np.int64)
    return evaluator.compute()


# ---------------------------------------------------------------------------------------------------- loop hook
class InLoopValidation:
    """The trainer's validation hook: `hook(step)` validates when `step` is 0 or a multiple of `validation.every`
    (or `force`), then rank 0 writes `val/*` scalars to TensorBoard and one line to `validation.jsonl`.

    Every rank must call it at the same steps (the shards' counts are gathered). `postfix` holds the last result
    for the progress bar.
    """

    def __init__(self, trainer, writer, out_dir: Path):
        self.trainer = trainer
        self.config: "ValidationConfig" = trainer.config.validation
        self.writer = writer
        self.path = Path(out_dir) / "validation.jsonl"
        self.dataset = build_validation_dataset(trainer.config)
        self.seen = (None if self.dataset is None
                     else seen_classes(self.dataset.vocabulary, trainer.vocabulary))
        self.last_step: Optional[int] = None
        self.postfix: Dict[str, str] = {}

    def __call__(self, step: int, *, force: bool = False) -> Optional[Dict[str, object]]:
        if self.dataset is None or step == self.last_step or not (force or step % self.config.every == 0):
            return None
        trainer = self.trainer
        metrics = validate(trainer.model, self.dataset, template_set=trainer.config.template_set,
                           input_short_side=trainer.config.input_short_side, device=trainer.device, seen=self.seen,
                           batch_size=self.config.batch_size, max_images=self.config.max_images,
                           rank=trainer.rank, world_size=trainer.world_size)
        self.last_step = step
        self.postfix = {"val_macc": f"{metrics['mask_macc']:.1f}"}
        if trainer.is_main:
            for key, tag in TAGS.items():
                if key in metrics:
                    self.writer.add_scalar(tag, metrics[key], step)
            record = {"step": step, "dataset": self.config.kind,
                      **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                         for k, v in metrics.items() if k != "per_class_acc"},
                      "per_class_acc": [None if math.isnan(v) else v for v in metrics["per_class_acc"]]}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            LOG.info("step %d: GT-mask accuracy %.2f (mean over classes %.2f) on %d masks", step,
                     metrics["mask_acc"], metrics["mask_macc"], metrics["num_masks"])
        return metrics


# ---------------------------------------------------------------------------------------------------- final eval
def run_final_eval(config: "TrainConfig", export_dir: Path, out_dir: Path, device: torch.device) -> dict:
    """`ovs-eval` in this process (`ovs_ros.eval_cli.run`) on `config.final_eval`, with the exported card as the
    classifier; writes `<out_dir>/final_eval/metrics.json` (+ metrics.md) and returns the report. Under torchrun
    every rank calls it and `ovs-eval` shards the images over the existing process group. Always `--fresh`: the
    card keeps its path when a run is repeated, so `ovs-eval`'s per-image cache could hold another model's numbers."""
    from ovs_ros.eval_cli import build_parser, run

    final = config.final_eval
    card = Path(export_dir) / f"{config.export_name}.yaml"
    argv = ["--config", final.segmenter, "--dataset", final.dataset, "--root", final.root,
            "--out", str(Path(out_dir) / "final_eval"), "--device", final.device or str(device),
            "--overlays", str(final.overlays), "--fresh",
            "--set", f"classifier.card={card.resolve()}", "--set", f"weights_dir={card.parent.resolve()}",
            "--set", f"classifier.input_short_side={config.input_short_side}"]
    for item in final.set:
        argv += ["--set", item]
    if final.vocabulary:
        argv += ["--vocabulary", final.vocabulary]
    if final.limit:
        argv += ["--limit", str(final.limit)]
    if final.no_ap:
        argv.append("--no-ap")
    report = run(build_parser().parse_args(argv))
    LOG.info("final ovs-eval on %s: %s", final.dataset,
             {k: v for k, v in report["metrics"].items() if v is not None})
    return report


def card_metrics(report: dict, dataset: str, segmenter: str) -> Dict[str, object]:
    """An `ovs-eval` report as model-card `published` keys (`<benchmark>_<metric>`, models/README.md), e.g.
    `ade150_pq`, plus `generator`: the segmenter config the numbers were made with (the mask source matters)."""
    from ovs_ros.eval_cli import CARD_METRICS, PUBLISHED_PREFIX

    prefix = PUBLISHED_PREFIX.get(dataset)
    if prefix is None:
        return {}
    out: Dict[str, object] = {}
    for suffix, metric in CARD_METRICS.items():
        value = (report.get("metrics") or {}).get(metric)
        if value is not None:
            out[f"{prefix}_{suffix}"] = round(float(value), 2)
    if out:
        out["generator"] = segmenter
    return out
