"""FISA / FOV-Seg training options: configs, SIMO's trained set, each option trains and changes the output, FiSeR,
and the export loading into the Segmenter with TeVA."""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))  # ovs_training without installing it

from ovs_ros.config_utils import ConfigError  # noqa: E402

from ovs_training.config import load_train_config  # noqa: E402
from ovs_training.trainer import Trainer  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _config(name: str, tmp_path: Path, **overrides):
    return load_train_config(CONFIGS / f"{name}.yaml", output_dir=str(tmp_path / name), device="cpu",
                             **overrides)


def _probe(trainer: Trainer):
    """Mask embeddings of a fixed batch through the trained classifier (TeVA reads a fixed text)."""
    g = torch.Generator().manual_seed(11)
    pixels = torch.randn(1, 3, 96, 96, generator=g)
    masks = torch.rand(1, 3, 96, 96, generator=g)
    text = torch.nn.functional.normalize(torch.randn(4, 32, generator=g), dim=-1)
    clf = trainer.model.classifier
    clf.eval()
    with torch.no_grad():
        out = clf.encode_masks(pixels, masks, text if clf.teva is not None else None).mask_embeddings.clone()
    clf.train()
    return out


def test_configs_parse_and_reject_unknown_keys(tmp_path):
    real = load_train_config(CONFIGS / "fovseg_vit_l14_336_coco_panoptic.yaml")
    assert real.model_name == "ViT-L-14-336-quickgelu" and real.pretrained == "openai"
    assert (real.base_lr, real.weight_decay, real.batch_size, real.max_iter) == (1e-4, 0.05, 16, 25000)
    assert real.mask_prior_blocks == 24 and real.fovseg.teva and real.fovseg.fiser
    assert (real.fovseg.fiser_weight, real.fovseg.ce_weight, real.fovseg.query_lr_multiplier) == (1.0, 2.0, 0.1)
    fisa = load_train_config(CONFIGS / "fisa_vit_l14_336_coco_panoptic.yaml")
    assert fisa.fovseg.teva and not fisa.fovseg.fiser
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "tiny_fovseg.yaml").read_text().replace("  fiser_layers: 1", "  fiser_depth: 1"))
    with pytest.raises(ConfigError, match="fiser_depth"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="teva_targets"):
        load_train_config(CONFIGS / "tiny_fisa.yaml", fovseg={"teva_targets": "all"})
    with pytest.raises(ConfigError, match="train_text"):
        load_train_config(CONFIGS / "tiny_fisa.yaml", train_text=True)


def test_simo_trains_exactly_the_query_projections_teva_and_fiser(tmp_path):
    trainer = Trainer(_config("tiny_fovseg", tmp_path, max_iter=3, base_lr=1e-2))
    clf = trainer.model.classifier
    names = sorted(trainer.lr_multipliers)
    q = [n for n in names if ".attn." in n]
    assert q == sorted(f"classifier.model.visual.transformer.resblocks.{i}.attn.parametrizations.in_proj_{w}.original"
                       for i in range(4) for w in ("weight", "bias"))
    assert all(trainer.lr_multipliers[n] == 0.1 for n in q)
    rest = [n for n in names if n not in q]
    assert all(re.match(r"classifier\.teva\.|fovseg\.fiser\.", n) for n in rest)
    assert all(trainer.lr_multipliers[n] == 1.0 for n in rest)
    assert any(n.startswith("fovseg.fiser.") for n in rest) and "fovseg.fiser.mask_token" in rest
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == set(names)
    wd = {n: g["weight_decay"] for g in trainer.optimizer.param_groups for n in g["param_names"]}
    assert all(wd[n] == 0.0 for n in q if "bias" in n) and all(wd[n] == 0.05 for n in q if "weight" in n)

    attn = clf.model.visual.transformer.resblocks[1].attn
    before_w, before_b = attn.in_proj_weight.detach().clone(), attn.in_proj_bias.detach().clone()
    frozen = {n: t.detach().clone() for n, t in clf.state_dict().items() if "parametrizations" not in n
              and not n.startswith("teva.")}
    trainer.train(export=False)
    width = attn.embed_dim
    after_w, after_b = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
    assert torch.equal(after_w[width:], before_w[width:]) and torch.equal(after_b[width:], before_b[width:])
    assert not torch.equal(after_w[:width], before_w[:width])
    for n, t in clf.state_dict().items():
        if n in frozen:
            assert torch.equal(t, frozen[n]), n


def test_eva_simo_tensors_are_q_proj_weight_and_bias(tmp_path):
    trainer = Trainer(_config("tiny_fisa", tmp_path, model_name="tiny-eva", max_iter=1))
    q = sorted(n for n in trainer.lr_multipliers if ".attn." in n)
    assert q == sorted(f"classifier.model.visual.trunk.blocks.{i}.attn.q_proj.{w}" for i in range(4)
                       for w in ("weight", "bias"))


@pytest.mark.parametrize("name", ["tiny_fovseg", "tiny_fisa"])
def test_each_option_trains_and_changes_the_output(name, tmp_path):
    changed, still = [], []
    for lr, sink in ((1e-3, changed), (1e-12, still)):
        trainer = Trainer(_config(name, tmp_path / str(lr), max_iter=3, base_lr=lr))
        start = _probe(trainer)
        result = trainer.train(export=False)
        assert len(result.losses) == 3 and all(np.isfinite(result.losses))
        sink.append((_probe(trainer) - start).abs().max().item())
    assert changed[0] > 1e-4
    assert still[0] < 1e-7


def test_fiser_changes_what_trains_and_reconstructs_labels(tmp_path):
    """FiSeR's gradient reaches CLIP-V's f_q: with it on the tuned tensors differ from the same run without it."""
    on = Trainer(_config("tiny_fovseg", tmp_path / "on", max_iter=3, base_lr=1e-3))
    off_cfg = _config("tiny_fovseg", tmp_path / "off", max_iter=3, base_lr=1e-3)
    off = Trainer(dataclasses.replace(off_cfg, fovseg=dataclasses.replace(off_cfg.fovseg, fiser=False)))
    mask_token = on.fovseg.fiser.mask_token.detach().clone()
    on.train(export=False)
    off.train(export=False)
    name = "model.visual.transformer.resblocks.0.attn.parametrizations.in_proj_weight.original"
    a = dict(on.model.classifier.named_parameters())[name]
    b = dict(off.model.classifier.named_parameters())[name]
    assert not torch.equal(a, b)
    assert not torch.equal(on.fovseg.fiser.mask_token, mask_token)


def test_fiser_label_sentence_masks_exactly_one_class():
    from open_clip.tokenizer import SimpleTokenizer

    from ovs_training.fiser import FiSeR

    fiser = FiSeR(32, 64, 32, width=32, layers=1, heads=4)
    tok = SimpleTokenizer()
    ids, is_mask, kept = fiser.label_sentence(["cat", "traffic light", "grass"], 1)
    plain = tok("cat, traffic light, grass")[0]
    assert ids == plain[: len(ids)].tolist() and kept == 3  # same tokens, same length as the unmasked sentence
    masked = [t for t, m in zip(ids, is_mask) if m]
    assert masked == tok.encode("traffic light") and sum(is_mask) == len(tok.encode("traffic light"))
    assert fiser.label_sentence(["a " * 40, "b " * 40], 1) is None  # the masked label does not fit


@pytest.mark.parametrize("name", ["tiny_fovseg", "tiny_fisa"])
def test_export_loads_and_runs_in_the_segmenter_with_teva(name, tmp_path):
    from ovs_ros.models.cards import ModelCard
    from ovs_ros.segmenter import Segmenter

    trainer = Trainer(_config(name, tmp_path, max_iter=3, base_lr=1e-3))
    result = trainer.train()
    card = ModelCard.from_yaml(result.export["card"])
    assert card.teva == {"rank": 8, "adapter_hidden": 4, "adapter_grid_factor": 4} and card.mask_prior_blocks == 4
    from safetensors import safe_open

    with safe_open(str(result.export["weights"]), framework="pt") as f:
        keys = set(f.keys())
    assert not any("fiser" in k or "parametrizations" in k for k in keys)
    assert "model.visual.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert any(k.startswith("teva.g_o.") for k in keys)

    vocabulary = ["cat", "sofa", "stuff:floor"]
    overrides = {"classifier.card": str(result.export["card"]), "classifier.model_name": "tiny-vit",
                 "weights_dir": str(result.export["weights"].parent), "vocabulary": vocabulary,
                 "classifier.input_short_side": 96, "generator.input_short_side": 96, "generator.max_long_side": 128}
    segmenter = Segmenter.from_config("tiny", overrides)
    runtime = segmenter.classifier
    assert runtime.teva is not None and runtime.mask_prior_blocks == 4
    trained = trainer.model.classifier
    for name, value in runtime.state_dict().items():
        torch.testing.assert_close(value, _runtime_value(trained, name), rtol=0, atol=0, msg=name)
    image = (np.random.default_rng(1).random((120, 160, 3)) * 255).astype(np.uint8)
    out = segmenter.segment(image)
    assert out.panoptic.shape == (120, 160)
    with pytest.raises(ConfigError, match="TeVA"):
        Segmenter.from_config("tiny", dict(overrides, backend="onnxruntime", **{"generator.fixed_hw": [96, 128],
                                                                                 "classifier.fixed_hw": [96, 128]}))


def _runtime_value(trained, name: str):
    """The trained classifier's value of a runtime (unsplit) tensor name."""
    module_name, _, attr = name.rpartition(".")
    return getattr(trained.get_submodule(module_name), attr)


def test_fovseg_resume_reproduces_the_uninterrupted_run(tmp_path):
    """The split q/k/v, TeVA, FiSeR and its masked-label generator all resume exactly (losses bit for bit)."""
    common = dict(max_iter=4, checkpoint_every=2, base_lr=1e-3)
    full = Trainer(_config("tiny_fovseg", tmp_path / "full", **common))
    full_result = full.train(export=False)
    checkpoint = tmp_path / "full" / "tiny_fovseg" / "checkpoints" / "step_0000002.pth"
    resumed = Trainer(_config("tiny_fovseg", tmp_path / "resumed", resume=str(checkpoint), **common))
    resumed_result = resumed.train(export=False)
    assert resumed_result.losses == full_result.losses[2:]
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name


def test_fovseg_and_maftp_options_are_refused_together(tmp_path):
    with pytest.raises(ConfigError, match="fovseg and maftp are separate recipes"):
        load_train_config(CONFIGS / "tiny_fovseg.yaml", output_dir=str(tmp_path / "r"),
                          maftp={"rc_weight": 0.1})
