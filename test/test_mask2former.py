"""Mask2Former generator: parity with transformers on random weights, loud converters, checkpoint loading, shapes,
batching and export. CPU only, random weights, a few seconds in total."""
from __future__ import annotations

import re

import pytest
import torch

from ovs_ros.models.mask2former import (
    Mask2FormerConfig,
    Mask2FormerGenerator,
    convert_detectron2_state_dict,
    convert_hf_state_dict,
    load_generator_checkpoint,
    to_detectron2_state_dict,
)
from ovs_ros.models.mask2former.transformer_decoder import MASKED_ATTENTION_BIAS, masked_attention_bias

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _hf_model(pre_norm: bool = False):
    swin = transformers.SwinConfig(
        embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=7, drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_layers=2,
        decoder_layers=5, num_queries=10, num_labels=5, encoder_feedforward_dim=64, dim_feedforward=64,
        num_attention_heads=4, pre_norm=pre_norm,
    )
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    # transformers' init (std 0.02) gives near-identical, almost all-positive masks, which would leave the masked
    # attention untested: widen the mask head and the query features so that 40-85% of keys are masked per layer
    # and some queries have empty masks (rows reopened).
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.model.transformer_module.decoder.mask_predictor.parameters():
            p.normal_(0.0, 0.5, generator=generator)
        queries = model.model.transformer_module.queries_features.weight
        queries.copy_(torch.randn(queries.shape, generator=generator))
    return model


def _ours_from_hf(hf) -> Mask2FormerGenerator:
    model = Mask2FormerGenerator(Mask2FormerConfig.from_hf_config(hf.config)).eval()
    model.load_state_dict(convert_hf_state_dict(hf.state_dict()), strict=True)
    return model


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def hf_pair():
    hf = _hf_model()
    return hf, _ours_from_hf(hf)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return Mask2FormerGenerator(Mask2FormerConfig.tiny()).eval()


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("pre_norm", [False, True])
def test_parity_with_transformers(pre_norm, hf_pair):
    hf, ours = hf_pair if not pre_norm else (lambda m: (m, _ours_from_hf(m)))(_hf_model(pre_norm=True))
    torch.manual_seed(2)
    x = torch.randn(1, 3, 128, 96)  # non-square; stage maps 32x24 .. 4x3 exercise window padding and odd merging
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        features, pixels = ours.forward_features(x)
        out = ours(x)
    diffs = {f"backbone_res{i + 2}": _max_diff(a, b)
             for i, (a, b) in enumerate(zip(ref.encoder_hidden_states, features.feature_maps))}
    diffs["mask_features"] = _max_diff(ref.pixel_decoder_last_hidden_state, pixels.mask_features)
    diffs.update({f"multi_scale_{i}": _max_diff(a, b)
                  for i, (a, b) in enumerate(zip(ref.pixel_decoder_hidden_states, pixels.multi_scale_features))})
    diffs["class_logits"] = _max_diff(ref.class_queries_logits, out.class_logits)
    diffs["mask_logits"] = _max_diff(ref.masks_queries_logits, out.mask_logits)
    decoder = ours.transformer_decoder
    _, first_masks = decoder.predict_masks(decoder.query_feat.weight[None], pixels.mask_features)
    blocked = (masked_attention_bias(first_masks, pixels.multi_scale_features[0].shape[-2:]) != 0).float().mean()
    assert 0.2 < blocked.item() < 0.95, "the masked attention must be exercised"
    print(f"pre_norm={pre_norm} max abs diffs:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert out.mask_logits.shape == (1, 10, 32, 24)
    assert out.class_logits.shape == (1, 10, 6)
    assert all(v <= TOL for v in diffs.values()), diffs


def test_masked_attention_bias_reopens_empty_rows():
    logits = torch.randn(2, 4, 16, 16)
    logits[0, 1] = -5.0  # empty mask everywhere -> attends everywhere, like detectron2
    bias = masked_attention_bias(logits, (8, 8))
    blocked = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    blocked = blocked.sigmoid().flatten(2) < 0.5
    blocked[torch.where(blocked.sum(-1) == blocked.shape[-1])] = False  # detectron2's in-place rule, as an oracle
    assert torch.equal(bias == MASKED_ATTENTION_BIAS, blocked)
    assert torch.all(bias[0, 1] == 0) and torch.all((bias == 0) | (bias == MASKED_ATTENTION_BIAS))


def _to_hub_layout(state: dict) -> dict:
    """transformers >= 5 names -> names of the hub's model.safetensors (transformers 4.x)."""
    renames = [
        (r"encoder\.swin\.(embeddings|encoder)\.", r"encoder.\1."),
        (r"\.attention\.q_proj\.", ".attention.self.query."), (r"\.attention\.k_proj\.", ".attention.self.key."),
        (r"\.attention\.v_proj\.", ".attention.self.value."),
        (r"\.attention\.relative_position_bias\.", ".attention.self."),
        (r"\.attention\.o_proj\.", ".attention.output.dense."),
        (r"\.mlp\.fc1\.", ".intermediate.dense."), (r"\.mlp\.fc2\.", ".output.dense."),
    ]
    out = {}
    for key, value in state.items():
        if ".swin.layernorm." in key:
            continue
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value
        if key.endswith("attention.self.relative_position_bias_table"):
            out[key.replace("_bias_table", "_index")] = torch.zeros(49 * 49, dtype=torch.long)
    return out


def test_hub_layout_converts_like_in_memory_layout(hf_pair):
    hf, _ = hf_pair
    current = convert_hf_state_dict(hf.state_dict())
    hub = convert_hf_state_dict(_to_hub_layout(hf.state_dict()))
    assert current.keys() == hub.keys()
    assert all(torch.equal(current[k], hub[k]) for k in current)


# ------------------------------------------------------------------------------------------------ loud converters


def test_hf_converter_rejects_extra_key(hf_pair):
    state = dict(hf_pair[0].state_dict())
    state["model.transformer_module.decoder.layers.0.surprise.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=re.escape("model.transformer_module.decoder.layers.0.surprise.weight")):
        convert_hf_state_dict(state)


@pytest.mark.parametrize("key", [
    "class_predictor.bias",
    "model.pixel_level_module.encoder.swin.encoder.layers.2.blocks.1.attention.k_proj.weight",
    "model.transformer_module.decoder.layers.1.cross_attn.in_proj_weight",
])
def test_hf_converter_rejects_missing_key(hf_pair, key):
    state = dict(hf_pair[0].state_dict())
    del state[key]
    with pytest.raises(ValueError, match=re.escape(key)):
        convert_hf_state_dict(state)


def test_detectron2_round_trip_and_loud_failures(tiny):
    ours = tiny.state_dict()
    d2 = to_detectron2_state_dict(ours)  # numpy values, detectron2 names
    assert "sem_seg_head.predictor.query_feat.weight" in d2 and "backbone.norm3.weight" in d2
    back = convert_detectron2_state_dict(d2)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    extra = dict(d2, **{"sem_seg_head.predictor.bogus": d2["backbone.norm0.bias"]})
    with pytest.raises(ValueError, match="sem_seg_head.predictor.bogus"):
        convert_detectron2_state_dict(extra)
    missing = dict(d2)
    del missing["sem_seg_head.pixel_decoder.adapter_1.norm.bias"]
    with pytest.raises(ValueError, match=re.escape("sem_seg_head.pixel_decoder.adapter_1.norm.bias")):
        convert_detectron2_state_dict(missing)


# ------------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip(tmp_path, hf_pair):
    from safetensors.torch import save_file

    hf, ours = hf_pair
    config = Mask2FormerConfig.from_hf_config(hf.config)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = ours(x)
    for name, state in (("ours.safetensors", convert_hf_state_dict(hf.state_dict())),
                        ("hf.safetensors", {k: v.contiguous() for k, v in hf.state_dict().items()})):
        path = tmp_path / name
        save_file(state, str(path))
        loaded = load_generator_checkpoint(path, config)
        with torch.no_grad():
            got = loaded(x)
        assert torch.equal(got.mask_logits, expected.mask_logits)
        assert torch.equal(got.class_logits, expected.class_logits)
    pth = tmp_path / "d2.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in to_detectron2_state_dict(ours.state_dict()).items()}},
               pth)
    with torch.no_grad():
        assert torch.equal(load_generator_checkpoint(pth, config)(x).class_logits, expected.class_logits)


def test_checkpoint_errors(tmp_path, tiny):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_generator_checkpoint(missing, tiny.config)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_generator_checkpoint(corrupt, tiny.config)
    corrupt_pkl = tmp_path / "corrupt.pkl"
    corrupt_pkl.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="corrupt.pkl"):
        load_generator_checkpoint(corrupt_pkl, tiny.config)


def test_checkpoint_config_mismatch(tmp_path, tiny):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file(tiny.state_dict(), str(path))
    other = Mask2FormerConfig.tiny(num_classes=3)
    with pytest.raises(ValueError, match="does not fit the config"):
        load_generator_checkpoint(path, other)


# ------------------------------------------------------------------------------------------------ tiny generator


def test_tiny_forward_shapes_and_batching(tiny):
    cfg = tiny.config
    assert tiny.size_divisibility == 32 and tiny.class_names == cfg.class_names and len(cfg.class_names) == 8
    torch.manual_seed(3)
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        batch = tiny(x)
        singles = [tiny(x[i:i + 1]) for i in range(2)]
    assert batch.mask_logits.shape == (2, cfg.num_queries, 32, 40)
    assert batch.class_logits.shape == (2, cfg.num_queries, cfg.num_classes + 1)
    assert torch.isfinite(batch.mask_logits).all() and torch.isfinite(batch.class_logits).all()
    for i, single in enumerate(singles):
        assert _max_diff(batch.mask_logits[i:i + 1], single.mask_logits) <= 1e-5
        assert _max_diff(batch.class_logits[i:i + 1], single.class_logits) <= 1e-5


def test_coco_panoptic_configs():
    cfg = Mask2FormerConfig.swin_tiny_coco_panoptic()
    assert cfg.num_classes == 133 and cfg.class_names[0] == "person" and cfg.decoder_layers == 9
    assert Mask2FormerConfig.swin_large_coco_panoptic().num_queries == 200
    assert Mask2FormerConfig.swin_base_coco_panoptic().window_size == 12
    with pytest.raises(ValueError, match="class_names"):
        Mask2FormerConfig(num_classes=3, class_names=["a"])


class _Tensors(torch.nn.Module):
    """Export wrapper: tuple outputs instead of the dataclass."""

    def __init__(self, generator: Mask2FormerGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.generator(pixel_values)
        return out.mask_logits, out.class_logits


def test_export(tiny):
    x = torch.randn(1, 3, 64, 64)
    wrapper = _Tensors(tiny).eval()
    exported = torch.export.export(wrapper, (x,))
    with torch.no_grad():
        expected = wrapper(x)
        got = exported.module()(x)
    assert all(_max_diff(a, b) <= 1e-5 for a, b in zip(expected, got))
