"""Typed settings of the in-loop validation (`validation:`) and of the end-of-training `ovs-eval` run
(`final_eval:`); both are sections of `TrainConfig`, so unknown keys fail as everywhere else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ovs_ros.config_utils import ConfigError

VALIDATION_KINDS = ("none", "synthetic", "ade150")


@dataclass
class ValidationConfig:
    """GT-mask accuracy (MaskCLIP++ `GTSegmentor` + `MaskAccEvaluator`) every `every` steps, at step 0 and at the end.

    Attributes:
        kind: "none"; "synthetic" = a held-out `SyntheticMaskDataset` (seed `seed`, never trained on);
            "ade150" = ADE20K-150 val semantic GT read by `ovs_ros.evaluation`'s `ade20k_150` reader, one mask per
            class present (as MaskCLIP++ evaluates `eval_mask_acc_ade150`).
        root: ade150: the datasets root holding `ADEChallengeData2016/` (the references' `$DETECTRON2_DATASETS`).
        every: validate every N optimizer steps (MaskCLIP++ `TEST.EVAL_PERIOD` 4000).
        max_images: evaluate the first N images only (None = the whole split; synthetic: None = 48 images).
        vocabulary: ade150: the class names and synonyms (a name in config/vocabularies or a YAML/TSV path; None =
            config/vocabularies/ade20k_150.yaml).
        batch_size: images per forward pass (images of one padded size share a pass).
        seed: synthetic: the held-out split's seed; it must differ from the training seed.
    """

    kind: str = "none"
    root: Optional[str] = None
    every: int = 4000
    max_images: Optional[int] = None
    vocabulary: Optional[str] = None
    batch_size: int = 8
    seed: int = 999

    def __post_init__(self) -> None:
        if self.kind not in VALIDATION_KINDS:
            raise ConfigError(f"validation.kind must be one of {VALIDATION_KINDS}, got {self.kind!r}")
        if self.kind == "ade150" and not self.root:
            raise ConfigError("validation.root is required for kind ade150")
        if self.every < 1 or self.batch_size < 1:
            raise ConfigError("validation.every and validation.batch_size must be >= 1")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"validation.max_images must be >= 1 or null, got {self.max_images}")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


@dataclass
class FinalEvalConfig:
    """A full `ovs-eval` run after the export, in process, with the freshly exported classifier card.

    Attributes:
        segmenter: segmenter config (a name in config/segmenter/ or a YAML) that supplies the mask generator; its
            classifier becomes the exported card (`classifier.card`, `weights_dir`) at the recipe's CLIP test size
            (`classifier.input_short_side` = the training config's `input_short_side`).
        dataset: an `ovs-eval --dataset` name (ovs_ros.evaluation.datasets.DATASETS), e.g. "ade20k_150_panoptic".
        root: the datasets root (`ovs-eval --root`).
        vocabulary: `ovs-eval --vocabulary` (benchmark vocabulary file where config/vocabularies lacks it).
        limit: evaluate the first N images only.
        set: extra `ovs-eval --set KEY=VALUE` overrides, applied after the ones above (so they win).
        device: None = the training device.
        no_ap: skip mask AP (`--no-ap`).
        overlays: overlay images to write.
    Results go to `<output_dir>/final_eval/` (`metrics.json`, `metrics.md`, the per-image cache).
    """

    segmenter: str
    dataset: str
    root: str
    vocabulary: Optional[str] = None
    limit: Optional[int] = None
    set: List[str] = field(default_factory=list)
    device: Optional[str] = None
    no_ap: bool = False
    overlays: int = 0

    def __post_init__(self) -> None:
        from ovs_ros.evaluation.datasets import DATASETS

        if self.dataset not in DATASETS:
            raise ConfigError(f"final_eval.dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"final_eval.limit must be >= 1 or null, got {self.limit}")
        bad = [item for item in self.set if not isinstance(item, str) or "=" not in item]
        if bad:
            raise ConfigError(f"final_eval.set items must be KEY=VALUE strings, got {bad}")
