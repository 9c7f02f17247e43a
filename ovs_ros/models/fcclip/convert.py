"""Released FC-CLIP checkpoints (`fcclip_cocopan.pth`, `fcclip_cocopan_b.pth`, ...) -> `FCCLIPGenerator`.

A released file is a detectron2 model dict, `{"model": FCCLIP.state_dict(), ...}` (trainer state may sit beside it).
The key map is explicit (house rule 5): each released prefix has one destination, one training-only tensor is
dropped by name, and anything else -- a key matching no rule, a model tensor the file lacks, a shape that differs --
raises one `ValueError` naming every offending key.

| released key                   | ours                    | note                                                 |
|--------------------------------|-------------------------|------------------------------------------------------|
| `backbone.clip_model.*`        | `backbone.clip.*`       | the whole open_clip model (names unchanged)          |
| `sem_seg_head.pixel_decoder.*` | `pixel_decoder.*`       | Mask2Former MSDeformAttn pixel decoder (unchanged)   |
| `sem_seg_head.predictor.*`     | `transformer_decoder.*` | + `class_embed.layers.*`, `_mask_pooling_proj.*`,    |
|                                |                         | `logit_scale` (FC-CLIP's class head)                 |
| `void_embedding.weight`        | `void_embedding.weight` |                                                      |
| `criterion.empty_weight`       | dropped                 | the loss's no-object weights (training only)         |

The CLIP projection head differs between the released models: `visual.head.proj.weight` (convnext_base_w_320,
FC-CLIP-B) or `visual.head.mlp.fc1.*` / `fc2.*` (convnext_large_d_320, FC-CLIP-L); a file whose head does not match
the configured CLIP is refused with that reason before the key lists.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import Tensor

from .config import FCCLIPConfig
from .generator import FCCLIPGenerator

PREFIX_MAP = (
    ("backbone.clip_model.", "backbone.clip."),
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("sem_seg_head.predictor.", "transformer_decoder."),
)
EXACT_MAP = {"void_embedding.weight": "void_embedding.weight"}
DROPPED = ("criterion.empty_weight",)
_HEAD_SENTINELS = {"proj": "backbone.clip_model.visual.head.proj.weight",
                   "mlp": "backbone.clip_model.visual.head.mlp.fc1.weight"}


def released_key_to_ours(key: str) -> str:
    """One released key -> our parameter name; KeyError for a key no rule covers (and for dropped keys)."""
    if key in EXACT_MAP:
        return EXACT_MAP[key]
    for theirs, ours in PREFIX_MAP:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    raise KeyError(key)


def our_key_to_released(key: str) -> str:
    """Inverse of `released_key_to_ours` (writes files in the released layout, e.g. for tests)."""
    for theirs, ours in EXACT_MAP.items():
        if key == ours:
            return theirs
    for theirs, ours in PREFIX_MAP:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def unwrap_model_dict(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The detectron2 `model` entry, or the mapping itself when it already is a flat state dict."""
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        return checkpoint["model"]
    return checkpoint


def convert_fcclip_state_dict(released: Mapping[str, Any], model: FCCLIPGenerator) -> dict[str, Tensor]:
    """Released FC-CLIP state dict -> our state dict for `model`, checked in both directions.

    Raises:
        ValueError: the CLIP head kind differs from the model's, or keys are unused / missing / misshaped (all
            listed in one message).
    """
    released = unwrap_model_dict(released)
    file_head = next((kind for kind, key in _HEAD_SENTINELS.items() if key in released), None)
    if file_head is not None and file_head != model.backbone.head_kind:
        raise ValueError(f"the checkpoint's CLIP head is visual.head.{file_head} but the configured CLIP "
                         f"{model.config.clip_model_name!r} has visual.head.{model.backbone.head_kind}: "
                         "FC-CLIP-B files need convnext_base_w_320, FC-CLIP-L files convnext_large_d_320")
    expected = model.state_dict()
    converted: dict[str, Tensor] = {}
    unused, misshaped = [], []
    for key, value in released.items():
        if key in DROPPED:
            continue
        try:
            ours = released_key_to_ours(key)
        except KeyError:
            unused.append(key)
            continue
        if ours not in expected:
            unused.append(key)
            continue
        tensor = torch.as_tensor(value)
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            misshaped.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(expected[ours].shape)}")
            continue
        converted[ours] = tensor
    missing = [our_key_to_released(k) for k in expected if k not in converted and not _misshaped_key(k, misshaped)]
    problems = []
    if unused:
        problems.append(f"{len(unused)} unused key(s): {sorted(unused)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {sorted(missing)}")
    if misshaped:
        problems.append(f"{len(misshaped)} misshaped key(s): {misshaped}")
    if problems:
        raise ValueError(f"FC-CLIP checkpoint does not match {model.config.clip_model_name!r}: " + "; ".join(problems))
    return converted


def _misshaped_key(ours: str, misshaped: list[str]) -> bool:
    released = our_key_to_released(ours)
    return any(entry.startswith(released + ":") for entry in misshaped)


def to_released_state_dict(model: FCCLIPGenerator, empty_weight: Tensor | None = None) -> dict[str, Tensor]:
    """Our state dict in the released layout (`criterion.empty_weight` added when given)."""
    out = {our_key_to_released(k): v for k, v in model.state_dict().items()}
    if empty_weight is not None:
        out["criterion.empty_weight"] = empty_weight
    return out


def load_fcclip_checkpoint(path: Union[str, Path], config: FCCLIPConfig) -> FCCLIPGenerator:
    """Build `FCCLIPGenerator(config)` and load a released `.pth` into it exactly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FC-CLIP checkpoint {path} not found")
    try:  # tensors and plain containers only: no code in a downloaded file can run
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} is not a plain FC-CLIP state-dict file (torch.load with weights_only=True refused "
                         f"it: {str(exc).splitlines()[0]})") from exc
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a dict with a 'model' state dict, got {type(checkpoint).__name__}")
    model = FCCLIPGenerator(config)
    model.load_state_dict(convert_fcclip_state_dict(checkpoint, model), strict=True)
    return model
