"""The MaskCLIP++ training loop: GT masks -> mask embeddings -> PSM logits -> class-balanced CE.

One step: sample one synonym per class, embed the GT masks with `ClipClassifier.encode_masks`, score them against
the sampled text embeddings through the PSM (`mask_class_logits`), weight the CE per class and image, clip the
gradient norm of every trained tensor, step AdamW and the cosine multiplier. Scalars go to TensorBoard.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ovs_ros.models.clip import build_psm, mask_class_logits, patch_grid_of
from ovs_ros.models.clip.mask_tokens import resample_masks_to_grid
from ovs_ros.templates import get_templates
from ovs_ros.text_cache import TextEmbeddingCache
from ovs_ros.vocabulary import Vocabulary

from .config import TrainConfig
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, restore_rng_states, rng_states
from .distributed import average_gradients, barrier, gather_objects, mean_over_ranks, seed_rank, world
from .datasets import (IGNORE_CLASS, COCOPanopticDataset, COCOStuffDataset, LargeScaleJitter, SyntheticMaskDataset,
                       collate_masks)
from .export import export_classifier
from .losses import class_balanced_cross_entropy, sample_synonym_rows
from .optim import apply_trainable, build_optimizer, classifier_lr_multipliers, fovseg_lr_multipliers
from .semantic_augmentation import SemanticAugmentation
from .sampling import AugmentedDataset, SeedWorker, TrainingStream, check_trainable_size
from .validation import InLoopValidation, card_metrics, run_final_eval

LOG = logging.getLogger(__name__)


class MaskClassificationModel(nn.Module):
    """The trained module: the CLIP classifier (`classifier.*`) and the PSM (`psm.*`)."""

    def __init__(self, classifier: nn.Module, psm: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.psm = psm

    def pixel_values(self, images_uint8: Tensor, image_sizes: Optional[Tensor] = None) -> Tensor:
        """`[B, 3, H, W]` uint8 RGB -> CLIP-normalised float (mean/std from the classifier, 0-1 scale); pixels
        outside `image_sizes` (`[B, 2]`, the collate's padding) are 0 after normalisation, as MaskCLIP++ pads."""
        mean = torch.tensor(self.classifier.pixel_mean_01, device=images_uint8.device).view(1, 3, 1, 1)
        std = torch.tensor(self.classifier.pixel_std_01, device=images_uint8.device).view(1, 3, 1, 1)
        values = (images_uint8.float() / 255.0 - mean) / std
        if image_sizes is not None:
            for i, (h, w) in enumerate(image_sizes.tolist()):
                values[i, :, h:, :] = 0
                values[i, :, :, w:] = 0
        return values

    def pad_to_stride(self, pixel_values: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
        """Pad bottom / right with 0 to multiples of the classifier's stride (MaskCLIP++ `PaddedList.from_tensors`
        with `size_divisibility`); a no-op for the LSJ crops, which already are."""
        stride = int(self.classifier.size_divisibility)
        h, w = pixel_values.shape[-2:]
        pad = (0, (-w) % stride, 0, (-h) % stride)
        if not any(pad):
            return pixel_values, masks
        return F.pad(pixel_values, pad, value=0.0), F.pad(masks, pad, value=0.0)

    def forward(self, pixel_values: Tensor, mask_probs: Tensor, text_embeddings: Tensor,
                synonym_class_index: Tensor, num_classes: int) -> Tensor:
        """-> `[B, Q, K]` class logits of each mask (cosine x CLIP scale through the PSM, max over synonyms)."""
        out = self.classifier.encode_masks(pixel_values, mask_probs)
        return mask_class_logits(out.mask_embeddings.float(), text_embeddings.float(), synonym_class_index,
                                 num_classes, self.psm, self.classifier.logit_scale.float(),
                                 patch_embeddings=out.patch_embeddings,
                                 patch_grid=None if out.patch_embeddings is None else patch_grid_of(
                                     pixel_values.shape[-2:], out.patch_embeddings.shape[1]))


def build_classifier_and_psm(config: TrainConfig) -> Tuple[nn.Module, nn.Module]:
    """The classifier (base CLIP weights) and a fresh PSM for the config's template set."""
    from ovs_ros.models.clip import ClipClassifier, ClipClassifierConfig, build_tiny_classifier

    torch.manual_seed(config.seed)
    teva = {} if config.fovseg is None else {"teva": config.fovseg.teva_config()}  # FISA / FOV-Seg TeVA
    if config.model_name.startswith("tiny-"):
        extra = {} if config.fovseg is None else dict(teva, mask_prior_blocks=config.mask_prior_blocks)
        classifier = build_tiny_classifier(config.model_name[len("tiny-"):],
                                           input_short_side=config.input_short_side, seed=config.seed, **extra)
    else:
        classifier = ClipClassifier(ClipClassifierConfig(
            model_name=config.model_name, pretrained=config.pretrained, input_short_side=config.input_short_side,
            mask_prior_blocks=config.mask_prior_blocks, **teva))
    psm = build_psm(config.psm, num_templates=len(get_templates(config.template_set)),
                    text_dim=classifier.embed_dim, image_dim=classifier.embed_dim)
    if config.psm_attention_dropout:
        set_psm_attention_dropout(psm, config.psm_attention_dropout)
    return classifier, psm


def set_psm_attention_dropout(psm: nn.Module, p: float) -> None:
    """MaskCLIP++ PseudoTextPSM `nn.MultiheadAttention(..., dropout=ATTENTION_PROBS_DROPOUT_PROB)`: the attention
    weights drop out with probability `p` in training mode only (the runtime PSM is built with 0 and runs in eval
    mode, where MultiheadAttention applies no dropout either way)."""
    attention = getattr(psm, "img2text", None)
    if not isinstance(attention, nn.MultiheadAttention):
        raise ValueError(f"attention dropout needs a PseudoTextPSM, got {type(psm).__name__}")
    attention.dropout = float(p)


def build_transform(config: TrainConfig):
    """The training augmentation of `config.data` (None = samples as read)."""
    data = config.data
    if data.augmentation == "none":
        return None
    if data.augmentation == "semantic":
        return SemanticAugmentation(data.short_edge_choices, max_size=data.max_size, crop_size=data.image_size,
                                    single_category_max_area=data.single_category_max_area,
                                    color_aug_ssd=data.color_aug_ssd, hflip=data.hflip)
    return LargeScaleJitter(data.image_size, min_scale=data.min_scale, max_scale=data.max_scale, hflip=data.hflip)


def build_dataset(config: TrainConfig) -> Dataset:
    data = config.data
    if data.kind == "synthetic":
        return SyntheticMaskDataset(num_images=data.num_images, image_size=data.image_size, seed=config.seed)
    vocabulary = None
    if data.vocabulary:
        from ovs_ros.paths import resolve_data_path

        vocabulary = Vocabulary.from_any(resolve_data_path(data.vocabulary, "config/vocabularies"))
    if data.kind == "coco_stuff":
        return COCOStuffDataset(data.root, data.split, vocabulary=vocabulary)
    return COCOPanopticDataset(data.root, data.split, vocabulary=vocabulary)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _NullWriter:
    """TensorBoard stand-in on ranks > 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class TrainResult:
    losses: List[float]
    output_dir: Path
    checkpoint: Optional[Path]
    export: Dict[str, Path] = field(default_factory=dict)
    final_eval: Optional[dict] = None  # the `ovs-eval` report of `config.final_eval`


class Trainer:
    """Runs `TrainConfig`. Pass `classifier`, `psm` or `dataset` to override what the config builds."""

    def __init__(self, config: TrainConfig, *, classifier: Optional[nn.Module] = None,
                 psm: Optional[nn.Module] = None, dataset: Optional[Dataset] = None):
        self.config = config
        self.rank, self.world_size = world()  # data-parallel position (`ovs_training.distributed`, torchrun)
        self.device = resolve_device(config.device)
        if self.world_size > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # set from LOCAL_RANK
        self.is_main = self.rank == 0
        if classifier is None or psm is None:
            built_classifier, built_psm = build_classifier_and_psm(config)
            classifier = classifier if classifier is not None else built_classifier
            psm = psm if psm is not None else built_psm
        self.model = MaskClassificationModel(classifier, psm)
        self.fovseg = None  # FISA / FOV-Seg (fovseg.py): SIMO tensors, TeVA targets, FiSeR
        if config.fovseg is not None:
            from .fovseg import FovSegObjective, split_query_projections

            split_query_projections(classifier)
            self.fovseg = FovSegObjective(config.fovseg, classifier, config.seed)
            self.model.add_module("fovseg", self.fovseg)
        self.model = self.model.to(self.device)
        self.dataset = dataset if dataset is not None else build_dataset(config)
        self.vocabulary: Vocabulary = self.dataset.vocabulary
        if config.fovseg is not None:
            clf_mults = fovseg_lr_multipliers(classifier, query_lr_multiplier=config.fovseg.query_lr_multiplier)
        else:
            clf_mults = classifier_lr_multipliers(classifier, clip_lr_multiplier=config.clip_lr_multiplier,
                                                  train_text=config.train_text,
                                                  text_lr_multiplier=config.text_lr_multiplier)
        self.lr_multipliers = {f"classifier.{k}": v for k, v in clf_mults.items()}
        self.lr_multipliers.update({f"psm.{k}": 1.0 for k, _ in psm.named_parameters()})
        if self.fovseg is not None:
            self.lr_multipliers.update({f"fovseg.{k}": 1.0 for k, _ in self.fovseg.named_parameters()})
        self.maftp = None  # MAFT+ options (ovs_training.maftp): extra loss terms, CLIP-V head frozen
        if config.maftp.active:
            from .maftp.objective import MAFTPlusObjective

            self.maftp = MAFTPlusObjective(config.maftp, classifier, seed=config.seed, device=self.device)
            self.lr_multipliers = self.maftp.adjust_lr_multipliers(self.lr_multipliers)
        self.last_loss_terms: Dict[str, float] = {}
        apply_trainable(self.model, self.lr_multipliers)
        self.optimizer, self.scheduler = build_optimizer(
            self.model, self.lr_multipliers, base_lr=config.base_lr, weight_decay=config.weight_decay,
            max_iter=config.max_iter, lr_end_multiplier=config.lr_end_multiplier, scheduler=config.scheduler,
            poly_power=config.poly_power, warmup_iters=config.warmup_iters, warmup_factor=config.warmup_factor)
        self.trained_params = [p for p in self.model.parameters() if p.requires_grad]
        self.templates = get_templates(config.template_set)
        self.synonym_class_index = torch.from_numpy(self.vocabulary.synonym_class_index.copy())
        self.synonym_generator = torch.Generator().manual_seed(config.seed)
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        self.amp_dtype = (torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self._frozen_text: Optional[Tensor] = None if config.train_text else self._frozen_text_embeddings()
        seed_rank(config.seed, self.rank)  # the model is built alike on every rank; what follows draws per rank
        self.start_step = 0
        self.last_grad_norm: Optional[float] = None
        if config.resume:
            self.load_checkpoint(config.resume)

    # ------------------------------------------------------------------------------------------------ text
    def _frozen_text_embeddings(self) -> Tensor:
        """`[S, T, D]` fp32 text embeddings of every synonym, computed once outside autocast through the runtime's
        `TextEmbeddingCache`, so training scores masks against the values inference uses (MaskCLIP++ computes
        them at model construction, in fp32)."""
        classifier = self.model.classifier
        cache = TextEmbeddingCache(
            lambda s: classifier.encode_text(classifier.tokenize(s).to(self.device)).float(),
            classifier.text_fingerprint(), device=self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            text = cache.embed(self.vocabulary, self.config.template_set).text_embeddings
        if text.dtype != torch.float32:
            raise RuntimeError(f"frozen text embeddings came out {text.dtype}, expected float32")
        return text

    def _text_embeddings(self, rows: Tensor) -> Tensor:
        """`[K, T, D]` L2-normalised text embeddings of the sampled synonym rows."""
        classifier = self.model.classifier
        if not self.config.train_text:
            return self._frozen_text.index_select(0, rows.to(self.device))
        phrases = [self.vocabulary.phrases[int(r)] for r in rows]
        sentences = [t.format(p) for p in phrases for t in self.templates]
        feats = classifier.encode_text(classifier.tokenize(sentences).to(self.device)).float()
        return F.normalize(feats, dim=-1).view(len(phrases), len(self.templates), -1)

    # ------------------------------------------------------------------------------------------------ step
    def _drop_empty(self, masks: Tensor, class_ids: Tensor) -> Tensor:
        """Class id -1 for masks that vanish on the patch / feature grid (MaskCLIP++ IGNORE_EMPTY)."""
        stride = self.model.classifier.size_divisibility
        grid = (masks.shape[-2] // stride, masks.shape[-1] // stride)
        with torch.no_grad():
            empty = resample_masks_to_grid(masks, grid).flatten(2).amax(-1) <= 0
        return torch.where(empty, torch.full_like(class_ids, IGNORE_CLASS), class_ids)

    def train_step(self, batch: Dict[str, Tensor]) -> float:
        images = batch["image"].to(self.device, non_blocking=True)
        masks = batch["masks"].to(self.device, non_blocking=True).float()
        class_ids = batch["class_ids"].to(self.device, non_blocking=True)
        pixel_values, masks = self.model.pad_to_stride(self.model.pixel_values(images, batch.get("image_sizes")),
                                                       masks)
        if self.config.ignore_empty_masks:
            class_ids = self._drop_empty(masks, class_ids)
        num_classes = len(self.vocabulary)
        rows = sample_synonym_rows(self.synonym_class_index, num_classes, self.synonym_generator)
        autocast = (torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext())
        with autocast:
            text = self._text_embeddings(rows)
            if self.maftp is not None:  # CE (weighted) + MAFT+'s mask-aware and RC terms
                loss, self.last_loss_terms = self.maftp.loss(
                    self.model, images, masks, class_ids, text, num_classes,
                    lambda lg, ids: class_balanced_cross_entropy(lg, ids, temperature=self.config.ce_temperature),
                    pixel_values=pixel_values)
            elif self.fovseg is not None:  # 2 x CE (TeVA mask tokens) + FiSeR
                phrases = [self.vocabulary.phrases[int(r)] for r in rows]
                loss = self.fovseg(self.model, pixel_values, masks, class_ids, text, phrases,
                                   self.config.ce_temperature)
            else:
                logits = self.model(pixel_values, masks, text,
                                    torch.arange(num_classes, device=self.device), num_classes)
        if self.maftp is None and self.fovseg is None:
            loss = class_balanced_cross_entropy(logits.float(), class_ids, temperature=self.config.ce_temperature)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        average_gradients(self.trained_params, self.world_size)  # DDP's mean, before the clip sees the gradient
        if self.config.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            # the pre-clip norm of the (rank-averaged) gradient; MaskCLIP++ clips nearly every step at 0.01
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trained_params,
                                                                       self.config.grad_clip_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(mean_over_ranks(loss.detach(), self.world_size))

    # ------------------------------------------------------------------------------------------------ loop
    def _loader(self, start_step: int = 0) -> DataLoader:
        """This rank's infinite batches from global step `start_step` on (`sampling.TrainingStream`); a dataset
        that cannot fill one batch raises instead of looping forever."""
        config = self.config
        check_trainable_size(len(self.dataset), config.batch_size)
        stream = TrainingStream(len(self.dataset), config.batch_size, seed=config.seed, rank=self.rank,
                                world_size=self.world_size, start_batch=start_step)
        dataset = AugmentedDataset(self.dataset, build_transform(config), seed=config.seed)
        # own generator: creating the iterator must not draw from the global torch RNG (exact resume)
        generator = torch.Generator().manual_seed(config.seed)
        return DataLoader(dataset, batch_size=stream.local_batch, sampler=stream, collate_fn=collate_masks,
                          num_workers=config.data.num_workers, worker_init_fn=SeedWorker(config.seed, self.rank),
                          generator=generator, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------------ state
    # config keys that may differ between a run and its resumption (they do not change the numbers)
    RESUME_FREE_KEYS = ("output_dir", "resume", "show_progress", "log_every", "checkpoint_every", "device",
                        "validation", "final_eval")  # validation draws no RNG and trains nothing

    def _generators(self) -> Dict[str, torch.Generator]:
        generators = {"synonyms": self.synonym_generator, **(self.maftp.rng_generators() if self.maftp else {})}
        if self.fovseg is not None:
            generators["fiser"] = self.fovseg.generator
        return generators

    def save_checkpoint(self, path: Path, step: int) -> Path:
        """Every rank calls it (the RNG states of all ranks are gathered); rank 0 writes."""
        rng_ranks = gather_objects(rng_states(self._generators()), self.world_size)
        if self.is_main:
            trained = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "step": step,
                        "trained": trained, "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                        "rng": rng_ranks[0], "rng_ranks": rng_ranks, "world_size": self.world_size,
                        "data": self._data_position(step), "config": dataclasses.asdict(self.config)}, path)
        barrier(self.world_size)
        return path

    def _data_position(self, step: int) -> Dict[str, object]:
        """Where the data stream stands after `step` steps, and the seeds it is drawn from (`sampling.py`)."""
        return {"next_global_batch": int(step), "samples_consumed": int(step) * self.config.batch_size,
                "dataset_size": len(self.dataset), "stream_seed": self.config.seed,
                "worker_seeds": "sampling.worker_seed(stream_seed, rank, worker_id)"}

    def load_checkpoint(self, path) -> int:
        """Continue from `path`: trained tensors, optimizer, scheduler, scaler, RNG states and data position.

        The checkpoint's config must equal this one except for `RESUME_FREE_KEYS` (and data.num_workers, which
        does not change the stream); anything else would not reproduce the interrupted run, so it is refused.
        """
        ckpt = load_checkpoint(path)
        saved, now = dict(ckpt["config"]), dataclasses.asdict(self.config)
        for cfg in (saved, now):
            for key in self.RESUME_FREE_KEYS:
                cfg.pop(key, None)
            cfg["data"] = {k: v for k, v in cfg["data"].items() if k != "num_workers"}
        differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if differ:
            raise ValueError(f"{path}: the checkpoint was written with other settings ({differ}); resuming would "
                             f"not reproduce that run")
        if int(ckpt.get("world_size", 1)) != self.world_size:
            raise ValueError(f"{path}: written by {ckpt.get('world_size')} process(es), resuming on {self.world_size}")
        position = ckpt["data"]
        if position != self._data_position(int(ckpt["step"])):
            raise ValueError(f"{path}: data position {position} does not fit this dataset / config (the stream would "
                             f"not continue where it stopped)")
        params = dict(self.model.named_parameters())
        missing = sorted(set(self.lr_multipliers) - set(ckpt["trained"]))
        unknown = sorted(set(ckpt["trained"]) - set(self.lr_multipliers))
        if missing or unknown:
            raise KeyError(f"{path}: trained tensors differ from this recipe: missing {missing}, unknown {unknown}")
        with torch.no_grad():
            for name, value in ckpt["trained"].items():
                params[name].copy_(value.to(params[name].device))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_states(ckpt["rng_ranks"][self.rank], self._generators())
        self.start_step = int(ckpt["step"])
        LOG.info("resumed %s at step %d", path, self.start_step)
        return self.start_step

    def train(self, *, export: bool = True) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        config = self.config
        out = Path(config.output_dir)
        if self.is_main:  # rank 0 alone writes the run folder
            out.mkdir(parents=True, exist_ok=True)
            with (out / "config.yaml").open("w", encoding="utf-8") as f:  # the resolved config beside the run
                yaml.safe_dump(dataclasses.asdict(config), f, sort_keys=False)
        writer = SummaryWriter(log_dir=str(out / "tensorboard")) if self.is_main else _NullWriter()
        self.model.train()
        losses: List[float] = []
        checkpoint = None
        step = self.start_step
        bar = tqdm(total=config.max_iter, initial=step, desc="train",
                   disable=not (config.show_progress and self.is_main))
        start = time.perf_counter()
        try:
            validation = InLoopValidation(self, writer, out)
            batches = iter(self._loader(step)) if step < config.max_iter else iter(())
            if step == 0:
                validation(0)
            while step < config.max_iter:
                batch = next(batches)
                lrs = [g["lr"] for g in self.optimizer.param_groups]
                loss = self.train_step(batch)
                losses.append(loss)
                step += 1
                validation(step, force=step == config.max_iter)
                if step % config.log_every == 0 or step == 1 or step == config.max_iter:
                    writer.add_scalar("train/loss", loss, step)
                    for term, value in self.last_loss_terms.items():
                        writer.add_scalar(f"train/{term}", value, step)
                    if self.last_grad_norm is not None:
                        writer.add_scalar("train/grad_norm_before_clip", self.last_grad_norm, step)
                    for g, lr in zip(self.optimizer.param_groups, lrs):
                        writer.add_scalar(f"lr/x{g['lr_multiplier']:g}_wd{g['weight_decay']:g}", lr, step)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lrs[0]:.2e}", **validation.postfix)
                bar.update(1)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    checkpoint = self.save_checkpoint(out / "checkpoints" / f"step_{step:07d}.pth", step)
        finally:
            bar.close()
            writer.flush()
            writer.close()
        LOG.info("trained %d steps in %.1f s", step, time.perf_counter() - start)
        checkpoint = self.save_checkpoint(out / "checkpoints" / "last.pth", step)
        exported: Dict[str, Path] = {}
        if self.is_main:
            with (out / f"losses_from_step_{self.start_step}.json").open("w", encoding="utf-8") as f:
                json.dump({"start_step": self.start_step, "world_size": self.world_size, "losses": losses}, f)
            if export:
                exported = self.export(out / "export")
        barrier(self.world_size)
        final_eval = None
        if config.final_eval is not None:
            if export:
                final_eval = run_final_eval(config, out / "export", out, self.device)
                measured = card_metrics(final_eval, config.final_eval.dataset, config.final_eval.segmenter)
                if self.is_main and measured:  # the card carries the numbers its own evaluation measured
                    exported = self.export(out / "export", metrics=measured)
                barrier(self.world_size)
            else:
                LOG.warning("final_eval skipped: the run does not export a classifier to evaluate")
        return TrainResult(losses=losses, output_dir=out, checkpoint=checkpoint, export=exported,
                           final_eval=final_eval)

    def _mask_prior_blocks(self) -> Optional[int]:
        """The classifier's mask-token depth (ViT families; ConvNeXt has none)."""
        classifier = self.model.classifier
        return None if classifier.family == "convnext" else int(classifier.mask_prior_blocks)

    def export(self, out_dir: Path, *, metrics: Optional[Dict[str, float]] = None) -> Dict[str, Path]:
        """The tuned tensors and a card with every runtime setting of this recipe; `metrics` (card `published`
        keys such as `ade150_miou`) when an evaluation measured them."""
        config = self.config
        names = [k[len("classifier."):] for k in self.lr_multipliers if k.startswith("classifier.")]
        fovseg = {}
        if self.fovseg is not None:  # the fused q/k/v as the runtime names it; TeVA's settings on the card
            from .fovseg import export_tensors

            teva = self.model.classifier.config.teva
            fovseg = {"tensors": export_tensors(self.model.classifier, names),
                      "teva": teva.card_dict() if teva.enabled else None,
                      "notes": "ovs_training FISA / FOV-Seg export: CLIP-V q projections (fused q/k/v with the base "
                               "k/v rows) and TeVA; FiSeR is training-only and not in the file"}
        return export_classifier(
            self.model.classifier, self.model.psm, out_dir, name=config.export_name, trained_names=names,
            psm_kind=config.psm, template_set=config.template_set, num_templates=len(self.templates),
            base_clip_pretrained=config.pretrained, input_short_side=config.input_short_side,
            mask_prior_blocks=self._mask_prior_blocks(), recipe=config.recipe or config.export_name,
            ensemble_on=config.ensemble_on, ensemble_alpha=config.ensemble_alpha, ensemble_beta=config.ensemble_beta,
            text_tower_tuned=config.train_text, metrics=metrics, **fovseg)
