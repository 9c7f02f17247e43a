"""The `maftp:` section of a training config: which MAFT+ losses run, their weights, and where the proposals of the
mask-aware loss come from (MAFT-Plus @fd12806 values in the comments). All off by default, so a MaskCLIP++ recipe is
unchanged."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from ovs_ros.config_utils import ConfigError

PROPOSAL_KINDS = ("none", "synthetic", "generator")


@dataclass
class ProposalConfig:
    """Mask proposals scored by the mask-aware loss.

    Attributes:
        kind: "none"; "synthetic" (perturbed ground-truth masks plus random blobs: tests and smoke runs only);
            "generator" (a frozen runtime mask generator run on each augmented training image).
        segmenter: generator: a runtime segmenter config (name in config/segmenter/ or YAML path) whose
            `generator` section is built, e.g. "maftp_b" or "tiny".
        overrides: generator: dotted overrides of that config (e.g. {"generator.checkpoint": "/w/maftp_b.pth"}).
        num_proposals: synthetic: proposals per image (the generator gives its own query count).
    """

    kind: str = "none"
    segmenter: Optional[str] = None
    overrides: Dict[str, object] = field(default_factory=dict)
    num_proposals: int = 8

    def __post_init__(self) -> None:
        if self.kind not in PROPOSAL_KINDS:
            raise ConfigError(f"maftp.proposals.kind must be one of {PROPOSAL_KINDS}, got {self.kind!r}")
        if self.kind == "generator" and not self.segmenter:
            raise ConfigError("maftp.proposals.segmenter is required for kind generator")
        if self.num_proposals < 1:
            raise ConfigError("maftp.proposals.num_proposals must be >= 1")


@dataclass
class MAFTPlusOptions:
    """Attributes:
        ce_weight: weight of the MaskCLIP++ GT-mask cross-entropy (MAFT+ trains CLIP-V and the CDT with the
            MA and RC losses only: 0; the generator's own losses are outside this package).
        rc_weight: Representation Compensation weight (MAFT+ `rc_weights` 0.1; 0 = off). ConvNeXt only.
        ma_weight: mask-aware loss weight (MAFT+ 1.0; 0 = off). Needs `proposals`.
        freeze_clip_head: keep `trunk.head` and `head` of CLIP-V frozen, train stem, stages and norm_pre
            (MAFT+ `_freeze`); False = every CLIP-V tensor trains (the MaskCLIP++ ConvNeXt recipe).
        proposals: where the mask-aware loss's proposals come from.
    """

    ce_weight: float = 1.0
    rc_weight: float = 0.0
    ma_weight: float = 0.0
    freeze_clip_head: bool = False
    proposals: ProposalConfig = field(default_factory=ProposalConfig)

    def __post_init__(self) -> None:
        if min(self.ce_weight, self.rc_weight, self.ma_weight) < 0:
            raise ConfigError("maftp.ce_weight, rc_weight and ma_weight must be >= 0")
        if self.ma_weight > 0 and self.proposals.kind == "none":
            raise ConfigError("maftp.ma_weight > 0 needs maftp.proposals (synthetic or generator)")
        if self.ce_weight == 0 and self.rc_weight == 0 and self.ma_weight == 0:
            raise ConfigError("maftp: every loss weight is 0, nothing would train")

    @property
    def active(self) -> bool:
        """Anything beyond the plain MaskCLIP++ step."""
        return self.ce_weight != 1.0 or self.rc_weight > 0 or self.ma_weight > 0 or self.freeze_clip_head
