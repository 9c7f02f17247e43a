"""MAFT+'s two extra losses, written from `maft/modeling/maft/representation_compensation.py` and
`maft/modeling/maft/mask_aware_loss.py` (MAFT-Plus @fd12806); test/test_training_maftp.py checks both against
literal re-statements of those functions.

* Representation Compensation: the tuned CLIP-V must keep the frozen CLIP-V's stride-32 map in aggregate, so the
  open-vocabulary ability survives fine-tuning. `SmoothL1(POD(relu(F_s)), POD(relu(F_t)))`, POD = row and column
  sums of average pools at 1, 2 and 4 cells per side after a bilinear resize to a square (MAFT+ weight 0.1).
* Mask-aware loss: a proposal's class probability should follow how well it covers the ground truth, so the
  classifier learns to rank good masks above poor ones of the same class. `SmoothL1(softmax(logits)[c],
  minmax_q(IoU(proposal_q, gt)))` per ground-truth mask of class c, the IoU target detached (MAFT+ weight 1).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

RC_SCALES = (1, 2, 4)


def pod_embedding(x: Tensor, scales: Sequence[int] = RC_SCALES) -> Tensor:
    """`[B, C, H, W]` -> `[B, N]` pooled row and column sums, as MAFT+ `_global_pod` (normalize off).

    A non-square map is resized (bilinear) to a square of side max(H, W); the pooling kernel is taken from the
    *original* width, as in the reference, so a tall map gives more than `s` cells per side at scale `s`."""
    b, width = x.shape[0], x.shape[-1]
    if width < max(scales):
        raise ValueError(f"a {tuple(x.shape[-2:])} map is too narrow for POD scales {tuple(scales)} (width >= "
                         f"{max(scales)}: a larger crop, e.g. >= {32 * max(scales)} px for a stride-32 map)")
    if x.shape[-1] != x.shape[-2]:
        side = max(x.shape[-2:])
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    parts = []
    for scale in scales:
        pooled = F.avg_pool2d(x, kernel_size=width // scale)
        parts += [pooled.sum(dim=2).reshape(b, -1), pooled.sum(dim=3).reshape(b, -1)]
    return torch.cat(parts, dim=1)


def representation_compensation_loss(student: Tensor, teacher: Tensor, scales: Sequence[int] = RC_SCALES) -> Tensor:
    """SmoothL1 (mean, beta 1) between the POD embeddings of the ReLU'd tuned and frozen dense maps."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} maps differ")
    a = pod_embedding(student.float().clamp_min(0.0), scales)
    b = pod_embedding(teacher.float().clamp_min(0.0), scales)
    return F.smooth_l1_loss(a, b)


def proposal_iou(proposal_probs: Tensor, gt_masks: Tensor) -> Tensor:
    """Soft IoU of every proposal with every GT mask: `[B, P, h, w]`, `[B, G, H, W]` -> `[B, G, P]`.

    Proposals are resized (bilinear) to the GT size when they differ, as MAFT+ `get_iou`."""
    if proposal_probs.shape[-2:] != gt_masks.shape[-2:]:
        proposal_probs = F.interpolate(proposal_probs, size=gt_masks.shape[-2:], mode="bilinear",
                                       align_corners=False)
    pred = proposal_probs.float().flatten(2)  # B, P, HW
    target = gt_masks.float().flatten(2)  # B, G, HW
    inter = target @ pred.transpose(1, 2)  # B, G, P
    union = target.sum(-1, keepdim=True) + pred.sum(-1).unsqueeze(1) - inter + 1e-7
    return inter / union


def mask_aware_loss(class_logits: Tensor, proposal_probs: Tensor, gt_masks: Tensor, gt_class_ids: Tensor) -> Tensor:
    """MAFT+ `MA_Loss` over a padded batch.

    Args:
        class_logits: `[B, P, K]` logits of the P proposals over the K classes (no void column).
        proposal_probs: `[B, P, h, w]` proposal probabilities (MAFT+ takes the sigmoid of the mask logits).
        gt_masks: `[B, G, H, W]` ground-truth masks.
        gt_class_ids: `[B, G]` their classes, -1 = padding (skipped).

    Returns:
        the mean SmoothL1 over every (GT mask, proposal) pair; 0 (with a graph) when no GT mask is valid.
    """
    if class_logits.shape[:2] != proposal_probs.shape[:2] or gt_masks.shape[:2] != gt_class_ids.shape:
        raise ValueError(f"shapes disagree: logits {tuple(class_logits.shape)}, proposals "
                         f"{tuple(proposal_probs.shape)}, gt masks {tuple(gt_masks.shape)}, ids "
                         f"{tuple(gt_class_ids.shape)}")
    valid = gt_class_ids >= 0  # B, G
    if not bool(valid.any()):
        return class_logits.sum() * 0.0
    probs = class_logits.float().softmax(-1)  # B, P, K
    index = gt_class_ids.clamp_min(0).unsqueeze(1).expand(-1, probs.shape[1], -1)  # B, P, G
    scores = probs.gather(-1, index).transpose(1, 2)[valid]  # N, P
    with torch.no_grad():
        iou = proposal_iou(proposal_probs, gt_masks)[valid]  # N, P
        low, high = iou.min(-1, keepdim=True)[0], iou.max(-1, keepdim=True)[0]
        target = (iou - low) / (high - low + 1e-8)
    return F.smooth_l1_loss(scores, target)
