"""The MaskCLIP++ training loop: GT masks -> mask embeddings -> PSM logits -> class-balanced CE.

One step: sample one synonym per class, embed the GT masks with `ClipClassifier.encode_masks`, score them against
the sampled text embeddings through the PSM (`mask_class_logits`), weight the CE per class and image, clip the
gradient norm of every trained tensor, step AdamW and the cosine multiplier. Scalars go to TensorBoard.
"""
from __future__ import annotations

import dataclasses
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

from ovs_ros.models.clip import build_psm, mask_class_logits
from ovs_ros.models.clip.mask_tokens import resample_masks_to_grid
from ovs_ros.templates import get_templates
from ovs_ros.text_cache import TextEmbeddingCache
from ovs_ros.vocabulary import Vocabulary

from .config import TrainConfig
from .datasets import IGNORE_CLASS, COCOPanopticDataset, ResizeCropFlip, SyntheticMaskDataset, collate_masks
from .export import export_classifier
from .losses import class_balanced_cross_entropy, sample_synonym_rows
from .optim import apply_trainable, build_optimizer, classifier_lr_multipliers

LOG = logging.getLogger(__name__)


class MaskClassificationModel(nn.Module):
    """The trained module: the CLIP classifier (`classifier.*`) and the PSM (`psm.*`)."""

    def __init__(self, classifier: nn.Module, psm: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.psm = psm

    def pixel_values(self, images_uint8: Tensor) -> Tensor:
        """`[B, 3, H, W]` uint8 RGB -> CLIP-normalised float (mean/std from the classifier, 0-1 scale)."""
        mean = torch.tensor(self.classifier.pixel_mean_01, device=images_uint8.device).view(1, 3, 1, 1)
        std = torch.tensor(self.classifier.pixel_std_01, device=images_uint8.device).view(1, 3, 1, 1)
        return (images_uint8.float() / 255.0 - mean) / std

    def forward(self, pixel_values: Tensor, mask_probs: Tensor, text_embeddings: Tensor,
                synonym_class_index: Tensor, num_classes: int) -> Tensor:
        """-> `[B, Q, K]` class logits of each mask (cosine x CLIP scale through the PSM, max over synonyms)."""
        out = self.classifier.encode_masks(pixel_values, mask_probs)
        return mask_class_logits(out.mask_embeddings.float(), text_embeddings.float(), synonym_class_index,
                                 num_classes, self.psm, self.classifier.logit_scale.float(),
                                 patch_embeddings=out.patch_embeddings)


def build_classifier_and_psm(config: TrainConfig) -> Tuple[nn.Module, nn.Module]:
    """The classifier (base CLIP weights) and a fresh PSM for the config's template set."""
    from ovs_ros.models.clip import ClipClassifier, ClipClassifierConfig, build_tiny_classifier

    torch.manual_seed(config.seed)
    if config.model_name.startswith("tiny-"):
        classifier = build_tiny_classifier(config.model_name[len("tiny-"):],
                                           input_short_side=config.input_short_side, seed=config.seed)
    else:
        classifier = ClipClassifier(ClipClassifierConfig(
            model_name=config.model_name, pretrained=config.pretrained, input_short_side=config.input_short_side,
            mask_prior_blocks=config.mask_prior_blocks))
    psm = build_psm(config.psm, num_templates=len(get_templates(config.template_set)),
                    text_dim=classifier.embed_dim, image_dim=classifier.embed_dim)
    return classifier, psm


def build_dataset(config: TrainConfig) -> Dataset:
    data = config.data
    if data.kind == "synthetic":
        return SyntheticMaskDataset(num_images=data.num_images, image_size=data.image_size, seed=config.seed)
    vocabulary = None
    if data.vocabulary:
        from ovs_ros.paths import resolve_data_path

        vocabulary = Vocabulary.from_any(resolve_data_path(data.vocabulary, "config/vocabularies"))
    return COCOPanopticDataset(data.root, data.split, vocabulary=vocabulary,
                               transform=ResizeCropFlip(data.image_size, hflip=data.hflip, seed=config.seed))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    losses: List[float]
    output_dir: Path
    checkpoint: Optional[Path]
    export: Dict[str, Path] = field(default_factory=dict)


class Trainer:
    """Runs `TrainConfig`. Pass `classifier`, `psm` or `dataset` to override what the config builds."""

    def __init__(self, config: TrainConfig, *, classifier: Optional[nn.Module] = None,
                 psm: Optional[nn.Module] = None, dataset: Optional[Dataset] = None):
        self.config = config
        self.device = resolve_device(config.device)
        if classifier is None or psm is None:
            built_classifier, built_psm = build_classifier_and_psm(config)
            classifier = classifier if classifier is not None else built_classifier
            psm = psm if psm is not None else built_psm
        self.model = MaskClassificationModel(classifier, psm).to(self.device)
        self.dataset = dataset if dataset is not None else build_dataset(config)
        self.vocabulary: Vocabulary = self.dataset.vocabulary
        clf_mults = classifier_lr_multipliers(classifier, clip_lr_multiplier=config.clip_lr_multiplier,
                                              train_text=config.train_text,
                                              text_lr_multiplier=config.text_lr_multiplier)
        self.lr_multipliers = {f"classifier.{k}": v for k, v in clf_mults.items()}
        self.lr_multipliers.update({f"psm.{k}": 1.0 for k, _ in psm.named_parameters()})
        apply_trainable(self.model, self.lr_multipliers)
        self.optimizer, self.scheduler = build_optimizer(
            self.model, self.lr_multipliers, base_lr=config.base_lr, weight_decay=config.weight_decay,
            max_iter=config.max_iter, lr_end_multiplier=config.lr_end_multiplier)
        self.trained_params = [p for p in self.model.parameters() if p.requires_grad]
        self.templates = get_templates(config.template_set)
        self.synonym_class_index = torch.from_numpy(self.vocabulary.synonym_class_index.copy())
        self.synonym_generator = torch.Generator().manual_seed(config.seed)
        self._frozen_text: Optional[Tensor] = None
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        self.amp_dtype = (torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    # ------------------------------------------------------------------------------------------------ text
    def _text_embeddings(self, rows: Tensor) -> Tensor:
        """`[K, T, D]` L2-normalised text embeddings of the sampled synonym rows."""
        classifier = self.model.classifier
        if not self.config.train_text:
            if self._frozen_text is None:
                cache = TextEmbeddingCache(
                    lambda s: classifier.encode_text(classifier.tokenize(s).to(self.device)),
                    classifier.text_fingerprint(), device=self.device)
                self._frozen_text = cache.embed(self.vocabulary, self.config.template_set).text_embeddings
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
        if self.config.ignore_empty_masks:
            class_ids = self._drop_empty(masks, class_ids)
        num_classes = len(self.vocabulary)
        rows = sample_synonym_rows(self.synonym_class_index, num_classes, self.synonym_generator)
        autocast = (torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext())
        with autocast:
            text = self._text_embeddings(rows)
            logits = self.model(self.model.pixel_values(images), masks, text,
                                torch.arange(num_classes, device=self.device), num_classes)
        loss = class_balanced_cross_entropy(logits.float(), class_ids, temperature=self.config.ce_temperature)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trained_params, self.config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    # ------------------------------------------------------------------------------------------------ loop
    def _loader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(self.dataset, batch_size=self.config.batch_size, shuffle=True, drop_last=True,
                          collate_fn=collate_masks, num_workers=self.config.data.num_workers,
                          generator=generator, pin_memory=self.device.type == "cuda")

    def save_checkpoint(self, path: Path, step: int) -> Path:
        trained = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"step": step, "trained": trained, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "config": dataclasses.asdict(self.config)}, path)
        return path

    def train(self, *, export: bool = True) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        config = self.config
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "config.yaml").open("w", encoding="utf-8") as f:  # the resolved config beside the run
            yaml.safe_dump(dataclasses.asdict(config), f, sort_keys=False)
        writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.model.train()
        losses: List[float] = []
        checkpoint = None
        step = 0
        bar = tqdm(total=config.max_iter, desc="train", disable=not config.show_progress)
        start = time.perf_counter()
        try:
            while step < config.max_iter:
                for batch in self._loader():
                    lrs = [g["lr"] for g in self.optimizer.param_groups]
                    loss = self.train_step(batch)
                    losses.append(loss)
                    step += 1
                    if step % config.log_every == 0 or step == 1 or step == config.max_iter:
                        writer.add_scalar("train/loss", loss, step)
                        for g, lr in zip(self.optimizer.param_groups, lrs):
                            writer.add_scalar(f"lr/x{g['lr_multiplier']:g}_wd{g['weight_decay']:g}", lr, step)
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lrs[0]:.2e}")
                    bar.update(1)
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        checkpoint = self.save_checkpoint(out / "checkpoints" / f"step_{step:07d}.pth", step)
                    if step >= config.max_iter:
                        break
        finally:
            bar.close()
            writer.flush()
            writer.close()
        LOG.info("trained %d steps in %.1f s", step, time.perf_counter() - start)
        checkpoint = self.save_checkpoint(out / "checkpoints" / "last.pth", step)
        exported: Dict[str, Path] = {}
        if export:
            exported = self.export(out / "export")
        return TrainResult(losses=losses, output_dir=out, checkpoint=checkpoint, export=exported)

    def export(self, out_dir: Path) -> Dict[str, Path]:
        names = [k[len("classifier."):] for k in self.lr_multipliers if k.startswith("classifier.")]
        return export_classifier(
            self.model.classifier, self.model.psm, out_dir, name=self.config.export_name, trained_names=names,
            psm_kind=self.config.psm, template_set=self.config.template_set, num_templates=len(self.templates),
            base_clip_pretrained=self.config.pretrained, input_short_side=self.config.input_short_side)
