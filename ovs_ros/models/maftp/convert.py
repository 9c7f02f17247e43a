"""Released MAFT+ checkpoints (`maftp_b.pth`, `maftp_l.pth`, `maftp_l_pano.pth`) -> `MAFTPlusGenerator`.

A released file is a detectron2 model dict of `MAFT_Plus` (`{"model": state_dict, ...}`): FC-CLIP's layout (mapped
by `ovs_ros.models.fcclip.convert`, every rule unchanged) plus MAFT+'s own modules. The map is explicit: anything no
rule covers, a model tensor the file lacks, or a shape that differs raises one `ValueError` naming every key.

| released key                     | ours                       | note                                               |
|----------------------------------|----------------------------|----------------------------------------------------|
| FC-CLIP's keys                   | as `fcclip/convert.py`     | `backbone.clip_model.*` is the fine-tuned CLIP     |
| `cdt.cross_atten.*`              | `cdt.cross_atten.*`        | multihead_attn (in_proj, out_proj), norm, MLP      |
| `backbone_t.clip_model.*`        | dropped                    | frozen teacher CLIP of the RC loss (training only) |
| `criterion.empty_weight`         | dropped                    | the loss's no-object weights (training only)       |

(`pixel_mean` / `pixel_std` are non-persistent buffers and `ma_loss` / `rc_loss` hold no tensors, so a released
file has none of them.)
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import Tensor

from ovs_ros.models.fcclip import convert as fcclip_convert

from .config import MAFTPlusConfig
from .generator import MAFTPlusGenerator

CDT_PREFIX = "cdt."  # same names on both sides
DROPPED = ("criterion.empty_weight",)
DROPPED_PREFIXES = ("backbone_t.",)


def released_key_to_ours(key: str) -> str:
    """One released key -> our parameter name; KeyError for a key no rule covers (and for dropped keys)."""
    if key.startswith(CDT_PREFIX):
        return key
    return fcclip_convert.released_key_to_ours(key)


def our_key_to_released(key: str) -> str:
    """Inverse of `released_key_to_ours`."""
    if key.startswith(CDT_PREFIX):
        return key
    return fcclip_convert.our_key_to_released(key)


def is_dropped(key: str) -> bool:
    return key in DROPPED or key.startswith(DROPPED_PREFIXES)


def convert_maftp_state_dict(released: Mapping[str, Any], model: MAFTPlusGenerator) -> dict[str, Tensor]:
    """Released MAFT+ state dict -> our state dict for `model`, checked in both directions.

    Raises:
        ValueError: the CLIP head kind differs from the model's, or keys are unused / missing / misshaped (all
            listed in one message). The CDT's residual form (panoptic or semantic) has no tensor: it comes from the
            config (the variant), as MAFT+'s comes from `TEST.PANOPTIC_ON`."""
    released = fcclip_convert.unwrap_model_dict(released)
    file_head = next((kind for kind, key in fcclip_convert._HEAD_SENTINELS.items() if key in released), None)
    if file_head is not None and file_head != model.backbone.head_kind:
        raise ValueError(f"the checkpoint's CLIP head is visual.head.{file_head} but the configured CLIP "
                         f"{model.config.clip_model_name!r} has visual.head.{model.backbone.head_kind}: "
                         "MAFT+-B files need convnext_base_w_320, MAFT+-L files convnext_large_d_320")
    expected = model.state_dict()
    converted: dict[str, Tensor] = {}
    unused, misshaped = [], []
    for key, value in released.items():
        if is_dropped(key):
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
    bad_shape = {entry.split(":")[0] for entry in misshaped}
    missing = [our_key_to_released(k) for k in expected
               if k not in converted and our_key_to_released(k) not in bad_shape]
    problems = []
    if unused:
        problems.append(f"{len(unused)} unused key(s): {sorted(unused)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {sorted(missing)}")
    if misshaped:
        problems.append(f"{len(misshaped)} misshaped key(s): {misshaped}")
    if problems:
        raise ValueError(f"MAFT+ checkpoint does not match {model.config.clip_model_name!r}: " + "; ".join(problems))
    return converted


def to_released_state_dict(model: MAFTPlusGenerator, empty_weight: Tensor | None = None,
                           teacher: bool = False) -> dict[str, Tensor]:
    """Our state dict in the released layout; `criterion.empty_weight` and the teacher copy (`backbone_t.*`, here
    a copy of the CLIP) added when asked, as a released file has them."""
    out = {our_key_to_released(k): v for k, v in model.state_dict().items()}
    if empty_weight is not None:
        out["criterion.empty_weight"] = empty_weight
    if teacher:
        out.update({"backbone_t.clip_model." + k: v.clone() for k, v in model.backbone.clip.state_dict().items()})
    return out


def load_maftp_checkpoint(path: Union[str, Path], config: MAFTPlusConfig) -> MAFTPlusGenerator:
    """Build `MAFTPlusGenerator(config)` and load a released `.pth` into it exactly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MAFT+ checkpoint {path} not found")
    try:  # tensors and plain containers only: no code in a downloaded file can run
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} is not a plain MAFT+ state-dict file (torch.load with weights_only=True refused "
                         f"it: {str(exc).splitlines()[0]})") from exc
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a dict with a 'model' state dict, got {type(checkpoint).__name__}")
    model = MAFTPlusGenerator(config)
    model.load_state_dict(convert_maftp_state_dict(checkpoint, model), strict=True)
    return model
