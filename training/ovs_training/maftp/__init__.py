"""MAFT+ training options (jiaosiyu1999/MAFT-Plus @fd12806) on the MaskCLIP++ classifier loop: the
Content-Dependent Transfer as a PSM (`psm: cdt` / `cdt_panoptic`), the Representation Compensation and mask-aware
losses (`losses.py`), the proposals the mask-aware loss scores (`proposals.py`) and the hook that adds both terms
to a training step (`objective.py`)."""
from .config import MAFTPlusOptions, ProposalConfig
from .losses import mask_aware_loss, pod_embedding, proposal_iou, representation_compensation_loss

__all__ = [
    "MAFTPlusOptions",
    "ProposalConfig",
    "mask_aware_loss",
    "pod_embedding",
    "proposal_iou",
    "representation_compensation_loss",
]
