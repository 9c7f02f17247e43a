"""Export the tuned tensors as `.safetensors` + a model card the Segmenter loads (format "ovs_safetensors").

The file holds only what the recipe trained, under our own parameter names: the tuned CLIP tensors as named in
`ClipClassifier.named_parameters()` (`model.visual.trunk.pos_embed`, `model.visual.trunk.blocks.N.attn.q_proj.weight`,
...), `mask_logit_scale`, and the PSM under `psm.` (`psm.corr_proj_in.0.weight`, ...). The base CLIP weights come from
open_clip (`base_clip_pretrained` on the card), as for MaskCLIP++'s own checkpoints. The safetensors metadata
records `format`, `format_version`, `model_name`, `psm`, `template_set`, `num_templates`, `mask_prior_blocks`,
`recipe` and the trained tensor names.

The card carries every setting the runtime needs to reproduce the evaluation (issue 9: settings travel with the
checkpoint): architecture, base CLIP tag, PSM, template set, CLIP input size, the ensemble settings, whether the
text tower was tuned, `mask_prior_blocks` (the runtime refuses a classifier built with another depth), the recipe
and the metrics when an evaluation measured them.

`load_ovs_classifier_checkpoint` depends on torch and safetensors only, so it can move verbatim into
`ovs_ros/models/clip/convert.py` (ovs_ros never imports ovs_training).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import torch
import yaml
from torch import Tensor, nn

from ovs_ros.models.clip.convert import (  # noqa: F401  (re-exported: the format lives beside the node's loaders)
    OVS_FORMAT,
    OVS_FORMAT_VERSION,
    PSM_PREFIX,
    load_ovs_classifier_checkpoint,
)


def export_state_dict(classifier: nn.Module, psm: Optional[nn.Module], names: Iterable[str],
                      values: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
    """The named classifier tensors plus every PSM tensor (prefixed `psm.`), detached, contiguous, fp32 on CPU;
    `values` (runtime name -> tensor, e.g. FISA's re-fused q/k/v) replaces the look-up by parameter name."""
    params = dict(classifier.named_parameters()) if values is None else dict(values)
    names = params.keys() if values is not None else names
    out: Dict[str, Tensor] = {}
    for name in sorted(names):
        if name not in params:
            raise KeyError(f"classifier has no parameter {name!r}")
        out[name] = params[name].detach().to("cpu", torch.float32).contiguous().clone()
    if psm is not None:
        for name, t in psm.state_dict().items():
            out[PSM_PREFIX + name] = t.detach().to("cpu", torch.float32).contiguous().clone()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_classifier(classifier: nn.Module, psm: nn.Module, out_dir: Union[str, Path], *, name: str,
                      trained_names: Iterable[str], psm_kind: str, template_set: str, num_templates: int,
                      base_clip_pretrained: Optional[str] = None, input_short_side: Optional[int] = None,
                      mask_prior_blocks: Optional[int] = None, recipe: Optional[str] = None,
                      ensemble_on: bool = False, ensemble_alpha: float = 1.0, ensemble_beta: float = 1.0,
                      text_tower_tuned: bool = False, metrics: Optional[Dict[str, float]] = None,
                      notes: str = "", tensors: Optional[Dict[str, Tensor]] = None,
                      teva: Optional[dict] = None) -> Dict[str, Path]:
    """Write `<name>.safetensors` and `<name>.yaml` (a `ovs_ros.models.cards.ModelCard`) under `out_dir`.

    `tensors` (FISA / FOV-Seg) are the classifier tensors to write under their runtime names, instead of
    `trained_names`; `teva` (TevaConfig fields) goes on the card and in the metadata, so the runtime builds TeVA.

    Returns:
        {"weights": path, "card": path}
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = export_state_dict(classifier, psm, trained_names, values=tensors)
    model_name = classifier.config.model_name
    metadata = {"format": OVS_FORMAT, "format_version": OVS_FORMAT_VERSION, "model_name": model_name,
                "psm": psm_kind, "template_set": template_set, "num_templates": str(num_templates),
                "trained": json.dumps(sorted(k for k in tensors if not k.startswith(PSM_PREFIX))),
                "mask_prior_blocks": json.dumps(mask_prior_blocks), "recipe": recipe or name}
    if teva:
        metadata["teva"] = json.dumps(teva)
    weights = out_dir / f"{name}.safetensors"
    save_file(tensors, str(weights), metadata=metadata)
    card = {
        "name": name,
        "role": "classifier",
        "architecture": model_name,
        "filename": weights.name,
        "format": OVS_FORMAT,
        "sha256": _sha256(weights),
        "base_clip_pretrained": base_clip_pretrained,
        "template_set": template_set,
        "psm": psm_kind,
        "input_short_side": input_short_side,
        "ensemble_on": bool(ensemble_on),
        "ensemble_alpha": float(ensemble_alpha),
        "ensemble_beta": float(ensemble_beta),
        "text_tower_tuned": bool(text_tower_tuned),
        "mask_prior_blocks": mask_prior_blocks,
        **({"teva": dict(teva)} if teva else {}),
        "recipe": recipe or name,
        "published": {str(k): v if isinstance(v, str) else float(v) for k, v in (metrics or {}).items()},
        "notes": notes or "ovs_training export: tuned CLIP tensors, mask_logit_scale and PSM under our names",
    }
    card_path = out_dir / f"{name}.yaml"
    with card_path.open("w", encoding="utf-8") as f:
        f.write(f"# {name}: exported by ovs_training (format {OVS_FORMAT} v{OVS_FORMAT_VERSION}).\n")
        yaml.safe_dump(card, f, sort_keys=False)
    from ovs_ros.models.cards import ModelCard

    ModelCard.from_yaml(card_path)  # the runtime must be able to read what was written
    return {"weights": weights, "card": card_path}
