"""Checkpoint conversion for the Mask2Former generator: explicit key maps that fail loudly.

Our parameter names are detectron2's with the head prefixes shortened (`_D2_TO_OURS_PREFIX`), so the detectron2 map
is a prefix swap, and the Hugging Face map is one table (`_UNITS`) of HF <-> detectron2 names (corrections.md item
13; transformers' own `convert_mask2former_original_pytorch_checkpoint_to_pytorch.py`). Each table row is a *unit*
(a module instance such as one Swin block) with all its members; a key that matches no unit member is *unused*, a
unit seen with some member absent (or a required unit never seen) has *missing* keys, and either raises a
`ValueError` listing every offending key. A unit absent as a whole (e.g. one decoder layer too few) is caught by the
strict `load_state_dict` in `load_generator_checkpoint`.

Two Hugging Face layouts are accepted: the hub's `model.safetensors` files (`attention.self.query`,
`encoder.encoder.layers`, ...) and the in-memory layout of transformers >= 5 (`attention.q_proj`,
`encoder.swin.encoder.layers`, ...); the first is renamed to the second by `_HF_LEGACY_RENAMES` before the table.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch
from torch import Tensor

from .config import Mask2FormerConfig
from .generator import Mask2FormerGenerator

_D2_TO_OURS_PREFIX = (
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("sem_seg_head.predictor.", "transformer_decoder."),
    ("backbone.", "backbone."),
)

_P = "model.pixel_level_module."
_SWIN = _P + "encoder.swin."
_T = "model.transformer_module."


@dataclass(frozen=True)
class _Unit:
    """One module instance. `hf` / `d2` are key-prefix templates with `{0}`, `{1}` standing for integer indices;
    `members` pairs a detectron2 suffix template with the HF suffix(es) it comes from (three HF tensors are
    concatenated on dim 0 into one fused q/k/v tensor). `d2_index_offset` is added to HF indices (Swin stage norms
    count from 1 in HF and from 0 in detectron2)."""

    hf: str
    d2: str
    members: tuple[tuple[str, Union[str, tuple[str, str, str]]], ...]
    required: bool = False
    d2_index_offset: int = 0


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


def _wb(d2: str, hf: str) -> tuple[tuple[str, str], ...]:
    return ((f"{d2}.weight", f"{hf}.weight"), (f"{d2}.bias", f"{hf}.bias"))


def _fused(d2: str, hf_q: str, hf_k: str, hf_v: str) -> tuple[tuple[str, tuple[str, str, str]], ...]:
    return tuple((f"{d2}{p}", (f"{hf_q}.{s}", f"{hf_k}.{s}", f"{hf_v}.{s}")) for p, s in (("weight", "weight"),
                                                                                        ("bias", "bias")))


_SA = "transformer_self_attention_layers.{0}."
_CA = "transformer_cross_attention_layers.{0}."
_FF = "transformer_ffn_layers.{0}."

_UNITS: tuple[_Unit, ...] = (
    # ---- Swin backbone
    _Unit(_SWIN + "embeddings.", "backbone.patch_embed.",
          _wb("proj", "patch_embeddings.projection") + _wb("norm", "norm"), required=True),
    _Unit(_SWIN + "encoder.layers.{0}.blocks.{1}.", "backbone.layers.{0}.blocks.{1}.",
          _wb("norm1", "layernorm_before")
          + _fused("attn.qkv.", "attention.q_proj", "attention.k_proj", "attention.v_proj")
          + (("attn.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),)
          + _wb("attn.proj", "attention.o_proj") + _wb("norm2", "layernorm_after")
          + _wb("mlp.fc1", "mlp.fc1") + _wb("mlp.fc2", "mlp.fc2")),
    _Unit(_SWIN + "encoder.layers.{0}.downsample.", "backbone.layers.{0}.downsample.",
          _same("reduction.weight") + _wb("norm", "norm")),
    _Unit(_P + "encoder.hidden_states_norms.stage{0}.", "backbone.norm{0}.", _same("weight", "bias"),
          d2_index_offset=-1),
    # ---- pixel decoder
    _Unit(_P + "decoder.", "sem_seg_head.pixel_decoder.",
          (("transformer.level_embed", "level_embed"),) + _wb("mask_features", "mask_projection"), required=True),
    _Unit(_P + "decoder.input_projections.{0}.", "sem_seg_head.pixel_decoder.input_proj.{0}.",
          _wb("0", "0") + _wb("1", "1")),
    _Unit(_P + "decoder.adapter_{0}.", "sem_seg_head.pixel_decoder.adapter_{0}.",
          (("weight", "0.weight"),) + _wb("norm", "1")),
    _Unit(_P + "decoder.layer_{0}.", "sem_seg_head.pixel_decoder.layer_{0}.",
          (("weight", "0.weight"),) + _wb("norm", "1")),
    _Unit(_P + "decoder.encoder.layers.{0}.", "sem_seg_head.pixel_decoder.transformer.encoder.layers.{0}.",
          _wb("self_attn.sampling_offsets", "self_attn.sampling_offsets")
          + _wb("self_attn.attention_weights", "self_attn.attention_weights")
          + _wb("self_attn.value_proj", "self_attn.value_proj")
          + _wb("self_attn.output_proj", "self_attn.output_proj")
          + _wb("norm1", "self_attn_layer_norm") + _wb("linear1", "fc1") + _wb("linear2", "fc2")
          + _wb("norm2", "final_layer_norm")),
    # ---- transformer decoder
    _Unit(_T, "sem_seg_head.predictor.",
          (("query_embed.weight", "queries_embedder.weight"), ("query_feat.weight", "queries_features.weight"),
           ("level_embed.weight", "level_embed.weight")) + _wb("decoder_norm", "decoder.layernorm"),
          required=True),
    _Unit(_T + "input_projections.{0}.", "sem_seg_head.predictor.input_proj.{0}.", _same("weight", "bias")),
    _Unit(_T + "decoder.layers.{0}.", "sem_seg_head.predictor.",
          _fused(_SA + "self_attn.in_proj_", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
          + _wb(_SA + "self_attn.out_proj", "self_attn.out_proj") + _wb(_SA + "norm", "self_attn_layer_norm")
          + ((_CA + "multihead_attn.in_proj_weight", "cross_attn.in_proj_weight"),
             (_CA + "multihead_attn.in_proj_bias", "cross_attn.in_proj_bias"))
          + _wb(_CA + "multihead_attn.out_proj", "cross_attn.out_proj") + _wb(_CA + "norm", "cross_attn_layer_norm")
          + _wb(_FF + "linear1", "fc1") + _wb(_FF + "linear2", "fc2") + _wb(_FF + "norm", "final_layer_norm")),
    _Unit(_T + "decoder.mask_predictor.mask_embedder.{0}.0.", "sem_seg_head.predictor.mask_embed.layers.{0}.",
          _same("weight", "bias")),
    _Unit("class_predictor.", "sem_seg_head.predictor.class_embed.", _same("weight", "bias"), required=True),
)

# Hub (transformers 4.x) Swin names -> transformers >= 5 names, as transformers' `conversion_mapping.py` does on load.
_HF_LEGACY_RENAMES = (
    (re.compile(r"^" + re.escape(_P) + r"encoder\.(embeddings|encoder)\."), _SWIN + r"\1."),
    (re.compile(r"\.attention\.self\.(query|key|value)\."),
     lambda m: {"query": ".attention.q_proj.", "key": ".attention.k_proj.", "value": ".attention.v_proj."}[m[1]]),
    (re.compile(r"\.attention\.self\.relative_position_"), ".attention.relative_position_bias.relative_position_"),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
    (re.compile(r"\.blocks\.(\d+)\.intermediate\.dense\."), r".blocks.\1.mlp.fc1."),
    (re.compile(r"\.blocks\.(\d+)\.output\.dense\."), r".blocks.\1.mlp.fc2."),
)

# Keys present in checkpoints that carry no weight of ours, each with the reason it is dropped.
_HF_IGNORED = (
    (re.compile(r"^criterion\.empty_weight$"), "loss weight of the void class (training only)"),
    (re.compile(r"\.relative_position_index$"), "derived from window_size; rebuilt by the model"),
    (re.compile(r"^" + re.escape(_SWIN) + r"layernorm\.(weight|bias)$"),
     "SwinModel's final norm, unused by the backbone"),
)
_D2_IGNORED = (
    (re.compile(r"^criterion\."), "loss state (training only)"),
    (re.compile(r"\.relative_position_index$"), "derived from window_size; rebuilt by the model"),
    (re.compile(r"^pixel_(mean|std)$"), "preprocessing constants (fixed ImageNet values in the generator)"),
)
# detectron2's `_load_from_state_dict` upgrades (version < 2).
_D2_LEGACY_RENAMES = ((re.compile(r"^sem_seg_head\.predictor\.static_query\."), "sem_seg_head.predictor.query_feat."),)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\d\})", template)
    return re.compile("".join(r"(\d+)" if re.fullmatch(r"\{\d\}", p) else re.escape(p) for p in parts))


def _hf_members(unit: _Unit) -> list[str]:
    out: list[str] = []
    for _, hf in unit.members:
        out.extend(hf if isinstance(hf, tuple) else (hf,))
    return out


def _raise_if_bad(source: str, unused: list[str], missing: list[str]) -> None:
    if not unused and not missing:
        return
    lines = [f"{source} state dict does not match the Mask2Former generator:"]
    if unused:
        lines.append(f"  {len(unused)} unused key(s) (no mapping): " + ", ".join(sorted(unused)))
    if missing:
        lines.append(f"  {len(missing)} missing key(s): " + ", ".join(sorted(missing)))
    raise ValueError("\n".join(lines))


def _normalise_hf_key(key: str) -> str:
    for pattern, replacement in _HF_LEGACY_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def detectron2_key_to_ours(key: str) -> str:
    for d2_prefix, our_prefix in _D2_TO_OURS_PREFIX:
        if key.startswith(d2_prefix):
            return our_prefix + key[len(d2_prefix):]
    raise ValueError(f"no detectron2 prefix for key {key!r}")


def our_key_to_detectron2(key: str) -> str:
    for d2_prefix, our_prefix in _D2_TO_OURS_PREFIX:
        if key.startswith(our_prefix):
            return d2_prefix + key[len(our_prefix):]
    raise ValueError(f"no generator prefix for key {key!r}")


def convert_hf_state_dict(hf_state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face `Mask2FormerForUniversalSegmentation` state dict (hub or transformers >= 5 names) -> ours.

    Raises:
        ValueError: listing every key with no mapping and every key a mapped module lacks.
    """
    compiled = [(unit, _template_regex(unit.hf), set(_hf_members(unit))) for unit in _UNITS]
    instances: dict[tuple[int, tuple[str, ...]], dict[str, Tensor]] = {}
    unused: list[str] = []
    for original_key, value in hf_state_dict.items():
        key = _normalise_hf_key(original_key)
        if any(pattern.search(key) for pattern, _ in _HF_IGNORED):
            continue
        for unit_id, (unit, prefix, members) in enumerate(compiled):
            match = prefix.match(key)
            if match and key[match.end():] in members:
                instances.setdefault((unit_id, match.groups()), {})[key[match.end():]] = value
                break
        else:
            unused.append(original_key)
    for unit_id, unit in enumerate(_UNITS):
        if unit.required:
            instances.setdefault((unit_id, ()), {})
    missing: list[str] = []
    out: dict[str, Tensor] = {}
    for (unit_id, groups), found in instances.items():
        unit = _UNITS[unit_id]
        hf_prefix = unit.hf.format(*groups)
        absent = [m for m in _hf_members(unit) if m not in found]
        if absent:
            missing.extend(hf_prefix + m for m in absent)
            continue
        d2_indices = [int(g) + unit.d2_index_offset for g in groups]
        for d2_suffix, hf in unit.members:
            tensor = torch.cat([found[m] for m in hf], 0) if isinstance(hf, tuple) else found[hf]
            out[detectron2_key_to_ours((unit.d2 + d2_suffix).format(*d2_indices))] = tensor
    _raise_if_bad("Hugging Face", unused, missing)
    return out


def convert_detectron2_state_dict(d2_state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """detectron2 Mask2Former state dict (the `"model"` dict of a model-zoo `.pkl`; numpy arrays or tensors) -> ours.

    Raises:
        ValueError: listing every key with no mapping and every key a mapped module lacks.
    """
    member_patterns = [
        (unit_id, _template_regex(unit.d2 + d2_suffix), d2_suffix)
        for unit_id, unit in enumerate(_UNITS) for d2_suffix, _ in unit.members
    ]
    instances: dict[tuple[int, tuple[str, ...]], set[str]] = {}
    unused: list[str] = []
    out: dict[str, Tensor] = {}
    for original_key, value in d2_state_dict.items():
        key = original_key
        for pattern, replacement in _D2_LEGACY_RENAMES:
            key = pattern.sub(replacement, key)
        if any(pattern.search(key) for pattern, _ in _D2_IGNORED):
            continue
        for unit_id, pattern, d2_suffix in member_patterns:
            match = pattern.fullmatch(key)
            if match:
                instances.setdefault((unit_id, match.groups()), set()).add(d2_suffix)
                tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
                if not isinstance(tensor, Tensor):
                    raise ValueError(f"detectron2 key {original_key!r} holds a {type(value).__name__}, not an array")
                out[detectron2_key_to_ours(key)] = tensor
                break
        else:
            unused.append(original_key)
    for unit_id, unit in enumerate(_UNITS):
        if unit.required:
            instances.setdefault((unit_id, ()), set())
    missing: list[str] = []
    for (unit_id, groups), found in instances.items():
        unit = _UNITS[unit_id]
        # groups come from one member's pattern; every member of a unit uses the same placeholders.
        for d2_suffix, _ in unit.members:
            if d2_suffix not in found:
                missing.append((unit.d2 + d2_suffix).format(*groups))
    _raise_if_bad("detectron2", unused, missing)
    return out


def to_detectron2_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Our state dict -> detectron2 names with numpy values (the `"model"` dict of a model-zoo `.pkl`)."""
    return {our_key_to_detectron2(k): v.detach().cpu().numpy() for k, v in state_dict.items()}


# ------------------------------------------------------------------------------------------------ loading


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 `.pkl` files that can only build numpy arrays and plain containers (no code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def _read_checkpoint(path: Path) -> Mapping[str, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if suffix == ".pkl":
            with path.open("rb") as f:
                return _NumpyOnlyUnpickler(f, encoding="latin1").load()
        if suffix in (".pth", ".pt", ".bin"):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name; the original stays chained
        raise ValueError(f"cannot read checkpoint {path} ({suffix}): {type(exc).__name__}: {exc}") from exc
    raise ValueError(f"unsupported checkpoint extension {suffix!r} for {path}: use .safetensors, .pkl, .pth or .pt")


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Detect the layout by sentinel key prefixes (HF, detectron2, or ours already) and convert to ours."""
    for wrapper in ("model", "state_dict"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
    keys = list(state_dict)
    if any(k.startswith(("model.pixel_level_module.", "model.transformer_module.")) for k in keys):
        return convert_hf_state_dict(state_dict)
    if any(k.startswith("sem_seg_head.") for k in keys):
        return convert_detectron2_state_dict(state_dict)
    if any(k.startswith(("pixel_decoder.", "transformer_decoder.")) for k in keys):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                for k, v in state_dict.items()}
    raise ValueError(f"unrecognised Mask2Former checkpoint layout; first keys: {keys[:5]}")


def load_generator_checkpoint(path: Union[str, Path], config: Mask2FormerConfig) -> Mask2FormerGenerator:
    """Build `Mask2FormerGenerator(config)` and strictly load a checkpoint into it, in eval mode.

    Accepts HF `model.safetensors`, detectron2 `.pkl` (numpy-only unpickler) and `.pth`/`.pt`
    (`torch.load(weights_only=True)`), in HF, detectron2 or our own key layout.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, unknown layout, unmapped/missing keys, or weights not fitting `config`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mask2Former checkpoint not found: {path}")
    state = convert_state_dict(_read_checkpoint(path))
    model = Mask2FormerGenerator(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit the config: {exc}") from exc
    return model.eval()
