"""Typed training configuration, loaded from one flat YAML file per recipe (house rule 1: unknown keys fail)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from ovs_ros.config_utils import ConfigError, dataclass_from_dict, load_yaml

from .maftp.config import MAFTPlusOptions
from .validation_config import FinalEvalConfig, ValidationConfig

DATASET_KINDS = ("synthetic", "coco_panoptic", "coco_stuff")
AUGMENTATIONS = ("lsj", "semantic", "none")
# MaskCLIP++ COCO-Stuff `_wtext` recipe: MIN_SIZE_TRAIN = [int(x * 0.1 * 448) for x in range(3, 20)]
WTEXT_SHORT_EDGES = [int(x * 0.1 * 448) for x in range(3, 20)]


@dataclass
class DataConfig:
    """Where the training images, GT masks and class ids come from.

    Attributes:
        kind: "synthetic" (`SyntheticMaskDataset`, for tests), "coco_panoptic" (`COCOPanopticDataset`) or
            "coco_stuff" (`COCOStuffDataset`, COCO-Stuff 164k semantic labels, one mask per class present).
        root: dataset root (coco_panoptic: holds `<split>/`, `panoptic_<split>/`, `annotations/panoptic_<split>.json`;
            coco_stuff: the datasets root holding `coco/<split>/` and `coco/stuffthingmaps_detectron2/<split>/`).
        split: e.g. "train2017".
        vocabulary: class names and synonyms in `ovs_ros.Vocabulary` form (a name in config/vocabularies such as
            "coco_panoptic", or a YAML path), matched to the dataset's category ids by `id`; None = the dataset's
            own names.
        num_images: synthetic only: dataset length.
        image_size: synthetic: image side in pixels. With `augmentation: lsj` also the LSJ target: the square
            crop every training image ends as (MaskCLIP++ `INPUT.IMAGE_SIZE`: EVA-B/16 512, EVA-L/14 and EVA-g/14
            448, ConvNeXt and RN50x16 1024).
        augmentation: "lsj" = MaskCLIP++'s `coco_panoptic_lsj` mapper: RandomFlip -> ResizeScale(min_scale..
            max_scale of the target) -> FixedSizeCrop(target), image padded with 128, masks with void
            (`datasets.LargeScaleJitter`); "semantic" = MaskCLIP++'s COCO-Stuff `mask_former_semantic` mapper:
            ResizeShortestEdge(`short_edge_choices`, `max_size`) -> random crop `image_size` (category-area
            constraint `single_category_max_area`) -> ColorAugSSD (`color_aug_ssd`) -> RandomFlip
            (`semantic_augmentation.SemanticAugmentation`); "none" = the samples as read.
        short_edge_choices, max_size, single_category_max_area, color_aug_ssd: the "semantic" augmentation
            (MaskCLIP++ `INPUT.MIN_SIZE_TRAIN` "choice", `MAX_SIZE_TRAIN`, `CROP.SINGLE_CATEGORY_MAX_AREA`,
            `COLOR_AUG_SSD`; the `_wtext` recipe: `int(x * 0.1 * 448)` for x in 3..19, 4096, 1.0, true).
        min_scale, max_scale: ResizeScale range (MaskCLIP++ 0.1, 2.0).
        hflip: the RandomFlip of the LSJ (probability 0.5).
        num_workers: DataLoader workers (0 = in the main process). The augmentation of each sample is drawn from
            (seed, epoch, index), so the result does not depend on the number of workers.
    """

    kind: str = "synthetic"
    root: Optional[str] = None
    split: str = "train2017"
    vocabulary: Optional[str] = None
    num_images: int = 64
    image_size: int = 96
    augmentation: str = "lsj"
    min_scale: float = 0.1
    max_scale: float = 2.0
    hflip: bool = True
    short_edge_choices: List[int] = field(default_factory=lambda: list(WTEXT_SHORT_EDGES))
    max_size: int = 4096
    single_category_max_area: float = 1.0
    color_aug_ssd: bool = True
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ConfigError(f"data.kind must be one of {DATASET_KINDS}, got {self.kind!r}")
        if self.kind in ("coco_panoptic", "coco_stuff") and not self.root:
            raise ConfigError(f"data.root is required for kind {self.kind}")
        if self.augmentation == "semantic" and self.kind != "coco_stuff":
            raise ConfigError("data.augmentation semantic needs semantic labels (kind coco_stuff); panoptic and "
                              "synthetic data take lsj or none")
        if not self.short_edge_choices or min(self.short_edge_choices) < 1 or self.max_size < 1:
            raise ConfigError(f"data.short_edge_choices must be positive sizes and data.max_size >= 1, got "
                              f"{self.short_edge_choices} / {self.max_size}")
        if not 0 < self.single_category_max_area <= 1.0:
            raise ConfigError(f"data.single_category_max_area must be in (0, 1], got {self.single_category_max_area}")
        if self.image_size < 1 or self.num_images < 1:
            raise ConfigError("data.image_size and data.num_images must be >= 1")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"data.augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(f"data.min_scale / max_scale must satisfy 0 < min <= max, got "
                              f"{self.min_scale} / {self.max_scale}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


TEVA_TARGETS = ("image_labels", "vocabulary")


@dataclass
class FovSegConfig:
    """FISA / FOV-Seg options (seed-spec 4-5; training/README.md "FISA / FOV-Seg options"). Setting `fovseg` at all
    switches the trained set to SIMO: CLIP-V's query projections f_q (x `query_lr_multiplier`) plus TeVA (x1)
    and, with FiSeR, its predictor and [M] token (x1, never exported). The text tower, f_k, f_v stay frozen.

    Attributes:
        teva: TeVA (FISA's SEVE) in every mask-token block (`mask_prior_blocks`; FOV-Seg: all blocks).
        teva_rank, teva_adapter_hidden, teva_adapter_grid_factor: `ovs_ros.models.clip.TevaConfig` fields.
        teva_targets: TeVA's [TGT] in training: "image_labels" (the image's GT classes, padded and masked, as the
            papers' K_max paragraph implies) or "vocabulary" (every training class, as at test time).
        fiser: FOV-Seg's FiSeR reconstruction loss (training only).
        fiser_weight, ce_weight: L = fiser_weight * L_FiSeR + ce_weight * L_CE (FOV-Seg: 1 and 2).
        fiser_width, fiser_layers, fiser_heads: the FiSeR predictor (a pre-norm Transformer encoder).
        query_lr_multiplier: LR multiplier of f_q ("0.1 for the feature backbone").
    """

    teva: bool = True
    teva_rank: int = 16
    teva_adapter_hidden: int = 8
    teva_adapter_grid_factor: int = 4
    teva_targets: str = "image_labels"
    fiser: bool = False
    fiser_weight: float = 1.0
    ce_weight: float = 2.0
    fiser_width: int = 256
    fiser_layers: int = 2
    fiser_heads: int = 4
    query_lr_multiplier: float = 0.1

    def __post_init__(self) -> None:
        if self.teva_targets not in TEVA_TARGETS:
            raise ConfigError(f"fovseg.teva_targets must be one of {TEVA_TARGETS}, got {self.teva_targets!r}")
        if self.fiser_weight < 0 or self.ce_weight <= 0 or self.query_lr_multiplier < 0:
            raise ConfigError("fovseg: fiser_weight and query_lr_multiplier must be >= 0, ce_weight > 0")
        if min(self.teva_rank, self.teva_adapter_hidden, self.teva_adapter_grid_factor, self.fiser_width,
               self.fiser_layers, self.fiser_heads) < 1 or self.fiser_width % self.fiser_heads:
            raise ConfigError("fovseg: sizes must be >= 1 and fiser_width a multiple of fiser_heads")

    def teva_config(self) -> dict:
        """The classifier's `teva` option for these settings."""
        return {"enabled": self.teva, "rank": self.teva_rank, "adapter_hidden": self.teva_adapter_hidden,
                "adapter_grid_factor": self.teva_adapter_grid_factor}


@dataclass
class TrainConfig:
    """The MaskCLIP++ fine-tuning recipe (seed-spec 2.3; corrections.md 8, 16-18).

    Attributes:
        model_name: open_clip architecture ("EVA02-B-16", ...) or a tiny test model ("tiny-eva").
        pretrained: open_clip tag or local file of the base CLIP weights (None = random: tests only).
        input_short_side: CLIP input size at test time, written to the model card (EVA-B 384, EVA-L 392).
        mask_prior_blocks: ViT: mask tokens enter the last N blocks (MaskCLIP++: 3).
        recipe: name of the reference recipe this config reproduces (written to the exported card), e.g.
            "maskclippp_coco-pan_eva-clip-vit-b-16"; None = the export name.
        psm: "linear" (ViT/EVA/RN), "pseudo_text" (ConvNeXt) or "identity".
        psm_attention_dropout: attention dropout of the PseudoTextPSM in training (MaskCLIP++ ConvNeXt configs
            `ATTENTION_PROBS_DROPOUT_PROB: 0.1`; no effect at inference).
        template_set: t1 | t14 | t80; belongs to the exported model card (corrections.md 8).
        train_text: the EVA `_wtext` behaviour: also tune the text tower's ln_1/ln_2, mlp, in_proj and positional
            embedding at `text_lr_multiplier` (corrections.md 17). False = text tower frozen (paper).
        clip_lr_multiplier: LR multiplier of the tuned CLIP-V tensors; None = per family (EVA/ViT 0.01,
            ConvNeXt 0.001; corrections.md 18).
        text_lr_multiplier: LR multiplier of the tuned text tensors when `train_text`.
        base_lr: AdamW LR of the PSM and the mask logit scale (MaskCLIP++ 2e-4).
        weight_decay: AdamW weight decay (0 on norms, biases and position embeddings).
        lr_end_multiplier: the cosine LR multiplier goes from 1 to this at `max_iter` (corrections.md 16).
        grad_clip_norm: max gradient norm over all trained tensors (MaskCLIP++ 0.01, full model).
        max_iter: optimizer steps (MaskCLIP++ 20K).
        batch_size: images per step (MaskCLIP++ 4).
        ignore_empty_masks: drop GT masks that are empty on the patch grid (MaskCLIP++ IGNORE_EMPTY, EVA/RN).
        ce_temperature: logits are divided by this before the CE (MaskCLIP++ 1.0).
        amp: autocast on CUDA (bf16 where supported, else fp16 with a GradScaler); ignored on the CPU.
        device: auto | cpu | cuda | cuda:N.
        seed: seeds model init (random-weight models), data order, augmentation and synonym sampling.
        output_dir: run folder: resolved config, TensorBoard events, checkpoints, export.
        log_every: TensorBoard / progress-bar interval in steps.
        checkpoint_every: save a training checkpoint every N steps (0 = only at the end).
        resume: a checkpoint (`checkpoints/*.pth` of a run of this config) to continue from; the run then
            reproduces the uninterrupted one (model, optimizer, scheduler, GradScaler, RNG states, data position).
        export_name: file stem of the exported `.safetensors` and model card.
        ensemble_on, ensemble_alpha, ensemble_beta: the evaluation settings written to the exported card (the
            MaskCLIP++ COCO-panoptic recipes evaluate with the ensemble off, alpha = beta = 1).
        show_progress: tqdm progress bar.
        validation: in-loop GT-mask accuracy (`validation_config.ValidationConfig`; kind none = off).
        final_eval: an `ovs-eval` run with the exported classifier after training (`FinalEvalConfig`; None = off).
        scheduler: "cosine" (MaskCLIP++, to `lr_end_multiplier`) or "warmup_poly" (MAFT+: detectron2 WarmupPolyLR
            with `poly_power`, `warmup_iters`, `warmup_factor`; MAFT+ 0.9, 0, 1.0).
        maftp: MAFT+ options (`ovs_training.maftp`): loss weights, proposals, CLIP-V head freezing.
        fovseg: FISA / FOV-Seg options (`FovSegConfig`); None = the MaskCLIP++ recipe.
    """

    model_name: str = "tiny-eva"
    pretrained: Optional[str] = None
    input_short_side: int = 384
    mask_prior_blocks: int = 3
    recipe: Optional[str] = None
    psm: str = "linear"
    psm_attention_dropout: float = 0.0
    template_set: str = "t14"
    train_text: bool = False
    clip_lr_multiplier: Optional[float] = None
    text_lr_multiplier: float = 0.01
    base_lr: float = 2e-4
    weight_decay: float = 0.05
    lr_end_multiplier: float = 0.05
    grad_clip_norm: float = 0.01
    max_iter: int = 20000
    batch_size: int = 4
    ignore_empty_masks: bool = True
    ce_temperature: float = 1.0
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    output_dir: str = "runs/maskclippp"
    log_every: int = 20
    checkpoint_every: int = 5000
    resume: Optional[str] = None
    export_name: str = "maskclippp_classifier"
    ensemble_on: bool = False
    ensemble_alpha: float = 1.0
    ensemble_beta: float = 1.0
    show_progress: bool = True
    scheduler: str = "cosine"
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    final_eval: Optional[FinalEvalConfig] = None
    maftp: MAFTPlusOptions = field(default_factory=MAFTPlusOptions)
    fovseg: Optional[FovSegConfig] = None

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.batch_size < 1:
            raise ConfigError("max_iter and batch_size must be >= 1")
        if self.fovseg is not None and self.maftp.active:
            raise ConfigError("fovseg and maftp are separate recipes (different trained tensors and losses); "
                              "set one of them")
        if not 0.0 <= self.lr_end_multiplier <= 1.0:
            raise ConfigError(f"lr_end_multiplier must be in [0, 1], got {self.lr_end_multiplier}")
        if self.psm not in ("linear", "pseudo_text", "identity", "cdt", "cdt_panoptic"):
            raise ConfigError(f"psm must be linear, pseudo_text, identity, cdt or cdt_panoptic, got {self.psm!r}")
        if self.scheduler not in ("cosine", "warmup_poly") or self.poly_power <= 0 or self.warmup_iters < 0:
            raise ConfigError(f"scheduler must be cosine or warmup_poly (poly_power > 0, warmup_iters >= 0), got "
                              f"{self.scheduler!r}, {self.poly_power}, {self.warmup_iters}")
        if self.grad_clip_norm < 0 or self.base_lr <= 0 or self.ce_temperature <= 0:
            raise ConfigError("grad_clip_norm must be >= 0, base_lr and ce_temperature > 0")
        if not 0.0 <= self.psm_attention_dropout < 1.0:
            raise ConfigError(f"psm_attention_dropout must be in [0, 1), got {self.psm_attention_dropout}")
        if self.psm_attention_dropout and self.psm != "pseudo_text":
            raise ConfigError("psm_attention_dropout applies to the pseudo_text PSM only")
        if self.fovseg is not None and self.train_text:
            raise ConfigError("fovseg trains CLIP-V's query projections only (SIMO): train_text must be false")
        if not self.ensemble_on and (self.ensemble_alpha != 1.0 or self.ensemble_beta != 1.0):
            raise ConfigError("ensemble_on is false, so ensemble_alpha and ensemble_beta must be 1.0 (CLIP only)")


def load_train_config(path: Union[str, Path], **overrides) -> TrainConfig:
    """`TrainConfig` from a YAML file; `overrides` replace top-level keys (None values are ignored)."""
    data = load_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return dataclass_from_dict(TrainConfig, data, where=str(path))
