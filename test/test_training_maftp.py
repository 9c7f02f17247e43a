"""ovs_training MAFT+ options (MAFT-Plus @fd12806) on tiny random-weight ConvNeXt CLIPs, CPU: the RC and mask-aware
losses against literal re-statements of MAFT+'s functions, the warm-up poly schedule against detectron2's
WarmupPolyLR, the CDT as a PSM, each option training a few steps, and the export running in the Segmenter."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training"))  # ovs_training without installing it

pytest.importorskip("open_clip")
pytest.importorskip("timm")

from ovs_ros.config_utils import ConfigError  # noqa: E402
from ovs_ros.models.clip import CDTPSM, IdentityPSM, build_psm, mask_class_logits, patch_grid_of  # noqa: E402
from ovs_ros.models.maftp.cdt import ContentDependentTransfer  # noqa: E402
from ovs_training.config import load_train_config  # noqa: E402
from ovs_training.datasets import SyntheticMaskDataset, collate_masks  # noqa: E402
from ovs_training.maftp.losses import (  # noqa: E402
    mask_aware_loss,
    pod_embedding,
    representation_compensation_loss,
)
from ovs_training.maftp.proposals import GeneratorProposals, SyntheticProposals  # noqa: E402
from ovs_training.optim import build_optimizer, warmup_poly_lr_multiplier  # noqa: E402
from ovs_training.trainer import Trainer  # noqa: E402

CONFIGS = REPO / "training" / "configs"
TINY = CONFIGS / "maftp_tiny_synthetic.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ literal re-statements of the reference code
def _ref_global_pod(x, spp_scales=[2, 4, 8], normalize=False):  # noqa: B006 - MAFT-Plus representation_compensation.py
    b = x.shape[0]
    w = x.shape[-1]
    if x.shape[-1] != x.shape[-2]:
        oh = x.shape[-1] if x.shape[-1] > x.shape[-2] else x.shape[-2]
        x = F.interpolate(x, size=(oh, oh), mode='bilinear', align_corners=False)
    emb = []
    for scale in spp_scales:
        tensor = F.avg_pool2d(x, kernel_size=w // scale)
        horizontal_pool = tensor.sum(dim=2).view(b, -1)
        vertical_pool = tensor.sum(dim=3).view(b, -1)
        if normalize:
            horizontal_pool = F.normalize(horizontal_pool, dim=1, p=2)
            vertical_pool = F.normalize(vertical_pool, dim=1, p=2)
        tensor_pool = torch.cat([horizontal_pool, vertical_pool], dim=-1)
        emb.append(tensor_pool)
    return torch.cat(emb, dim=1)


def _ref_rc_loss(a, b, spp_scales=(1, 2, 4)):  # Representation_Compensation("sl1", "relu", [1, 2, 4]).forward
    sl1 = nn.SmoothL1Loss()
    list_a, list_b = [a], [b]
    layer_losses = []
    for a, b in zip(list_a, list_b):
        a = torch.clamp(a, min=0.)
        b = torch.clamp(b, min=0.)
        a = _ref_global_pod(a, list(spp_scales), normalize=False)
        b = _ref_global_pod(b, list(spp_scales), normalize=False)
        layer_loss = sl1(a, b)
        layer_loss = torch.mean(layer_loss)
        layer_losses.append(layer_loss.unsqueeze(0))
    return torch.cat(layer_losses).mean()


class _RefMALoss(nn.Module):  # MAFT-Plus mask_aware_loss.py MA_Loss
    def __init__(self):
        super().__init__()
        self.sl1 = nn.SmoothL1Loss()

    def forward(self, out_vocab_cls_results, mask_results, targets):
        logits_per_image = F.softmax(out_vocab_cls_results[..., :-1], dim=-1)
        logits_per_instance, labels_per_instance, masks_per_instance = [], [], []
        mask_results = mask_results.sigmoid()
        for b in range(len(targets)):
            maski = mask_results[b].unsqueeze(0)
            for i in range(targets[b]['masks'].shape[0]):
                logiti = logits_per_image[b, :, targets[b]['labels'][i]].unsqueeze(0)
                labeli = targets[b]['masks'][i].unsqueeze(0)
                logits_per_instance.append(logiti)
                labels_per_instance.append(labeli)
                masks_per_instance.append(maski)
        masks_per_instance = torch.cat(masks_per_instance, dim=0)
        labels_per_instance = torch.cat(labels_per_instance, dim=0)
        logits_per_instance = torch.cat(logits_per_instance, dim=0)
        ious = self.get_iou(masks_per_instance, labels_per_instance).detach()
        ious = self.mynorm(ious)
        return self.sl1(logits_per_instance, ious)

    def get_iou(self, pred, target):
        b, c, h, w = pred.shape
        if len(target.shape) != len(pred.shape):
            target = target.unsqueeze(1)
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred, size=(target.shape[-2], target.shape[-1]), mode="bilinear",
                                 align_corners=False)
        pred = pred.reshape(b, c, -1)
        target = target.reshape(b, 1, -1)
        Iand1 = torch.sum(target * pred, dim=-1)  # noqa: N806
        Ior1 = torch.sum(target, dim=-1) + torch.sum(pred, dim=-1) - Iand1 + 0.0000001  # noqa: N806
        return Iand1 / Ior1

    def mynorm(self, embeding):
        min_em, _ = torch.min(embeding, dim=-1)
        max_em, _ = torch.max(embeding, dim=-1)
        return (embeding - min_em.unsqueeze(-1)) / ((max_em - min_em + 0.00000001).unsqueeze(-1))


def _ref_warmup_factor_at_iter(method, iter, warmup_iters, warmup_factor):  # detectron2 solver/lr_scheduler.py
    if iter >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    elif method == "linear":
        alpha = iter / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(method)


class _RefWarmupPolyLR(torch.optim.lr_scheduler._LRScheduler):  # detectron2 projects/deeplab/lr_scheduler.py
    def __init__(self, optimizer, max_iters, warmup_factor=0.001, warmup_iters=1000, warmup_method="linear",
                 last_epoch=-1, power=0.9, constant_ending=0.0):
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.power = power
        self.constant_ending = constant_ending
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        warmup_factor = _ref_warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor)
        if self.constant_ending > 0 and warmup_factor == 1.0:
            if math.pow((1.0 - self.last_epoch / self.max_iters), self.power) < self.constant_ending:
                return [base_lr * self.constant_ending for base_lr in self.base_lrs]
        return [base_lr * warmup_factor * math.pow((1.0 - self.last_epoch / self.max_iters), self.power)
                for base_lr in self.base_lrs]


# ---------------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("shape", [(2, 6, 8, 8), (2, 6, 6, 8), (2, 6, 8, 6), (1, 4, 16, 12)])
def test_rc_loss_matches_maftp_reference(shape):
    torch.manual_seed(0)
    student, teacher = torch.randn(shape), torch.randn(shape)
    torch.testing.assert_close(pod_embedding(student.clamp_min(0)), _ref_global_pod(student.clamp_min(0), [1, 2, 4]))
    ours = representation_compensation_loss(student, teacher)
    torch.testing.assert_close(ours, _ref_rc_loss(student, teacher), rtol=1e-6, atol=1e-7)
    assert ours > 0
    assert representation_compensation_loss(teacher, teacher) == 0
    # the scales matter: the reference's own default (2, 4, 8) gives another value on the same maps
    if shape[-1] >= 8:
        assert not torch.isclose(_ref_rc_loss(student, teacher, (2, 4, 8)), ours)


def test_rc_loss_refuses_a_map_too_narrow_for_its_scales():
    with pytest.raises(ValueError, match="too narrow"):
        representation_compensation_loss(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3))


def test_mask_aware_loss_matches_maftp_reference():
    torch.manual_seed(0)
    b, p, k, h, w = 3, 7, 5, 32, 40
    logits = torch.randn(b, p, k) * 3
    proposal_logits = torch.randn(b, p, h // 4, w // 4) * 2  # stride 4, resized to the GT frame inside
    counts = [2, 4, 1]
    gt_masks = torch.zeros(b, max(counts), h, w)
    gt_ids = torch.full((b, max(counts)), -1, dtype=torch.long)
    targets = []
    for i, n in enumerate(counts):
        masks = (torch.rand(n, h, w) > 0.6).float()
        labels = torch.randint(0, k, (n,))
        gt_masks[i, :n], gt_ids[i, :n] = masks, labels
        targets.append({"labels": labels, "masks": masks})
    with_void = torch.cat([logits, torch.randn(b, p, 1)], dim=-1)  # MAFT+'s logits carry a void column
    ref = _RefMALoss()(with_void, proposal_logits, targets)
    ours = mask_aware_loss(logits, proposal_logits.sigmoid(), gt_masks, gt_ids)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)  # float32: batched matmul vs per-instance sums
    # a wrong class column gives another loss (the loss follows the GT class)
    assert not torch.isclose(mask_aware_loss(logits, proposal_logits.sigmoid(), gt_masks, (gt_ids + 1) % k), ours)


def test_mask_aware_loss_gradient_reaches_logits_not_iou():
    logits = torch.randn(1, 4, 3, requires_grad=True)
    proposals = torch.rand(1, 4, 8, 8, requires_grad=True)
    gt = (torch.rand(1, 2, 8, 8) > 0.5).float()
    mask_aware_loss(logits, proposals, gt, torch.tensor([[0, 2]])).backward()
    assert logits.grad.abs().sum() > 0
    assert proposals.grad is None or proposals.grad.abs().sum() == 0  # the IoU target is detached
    empty = mask_aware_loss(logits, proposals, gt, torch.tensor([[-1, -1]]))
    assert empty.item() == 0.0 and empty.requires_grad


# ---------------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("warmup_iters,warmup_factor", [(0, 1.0), (5, 0.001), (7, 0.3)])
def test_warmup_poly_matches_detectron2(warmup_iters, warmup_factor):
    max_iter = 20
    p_ref = nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.AdamW([p_ref], lr=1e-4)
    ref = _RefWarmupPolyLR(ref_opt, max_iter, warmup_factor=warmup_factor, warmup_iters=warmup_iters, power=0.9)
    model = nn.Linear(2, 2)
    opt, sched = build_optimizer(model, {"weight": 0.1, "bias": 1.0}, base_lr=1e-4, weight_decay=2e-5,
                                 max_iter=max_iter, scheduler="warmup_poly", poly_power=0.9,
                                 warmup_iters=warmup_iters, warmup_factor=warmup_factor)
    for step in range(max_iter):
        expected = ref_opt.param_groups[0]["lr"]
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(expected * g["lr_multiplier"], rel=1e-12, abs=0), step
        assert warmup_poly_lr_multiplier(step, max_iter, 0.9, warmup_iters, warmup_factor) == pytest.approx(
            expected / 1e-4, rel=1e-12)
        ref_opt.step()
        ref.step()
        opt.step()
        sched.step()
    assert warmup_poly_lr_multiplier(max_iter + 5, max_iter) == 0.0


# ---------------------------------------------------------------------------------------------------- CDT PSM
def test_cdt_psm_is_the_runtime_cdt_on_the_template_mean():
    torch.manual_seed(0)
    d, s, t, b, q, (h, w) = 64, 5, 3, 2, 4, (3, 5)
    psm = build_psm("cdt", text_dim=d)
    assert isinstance(psm, CDTPSM) and isinstance(psm.cdt, ContentDependentTransfer) and not psm.cdt.panoptic
    with torch.no_grad():  # a non-trivial Linear so the semantic form's attention term shows
        psm.cdt.cross_atten.MLP.weight.normal_()
    text = F.normalize(torch.randn(s, t, d), dim=-1)
    patches, masks = torch.randn(b, h * w, d), torch.randn(b, q, d)
    scale = torch.tensor(math.log(50.0))
    got = psm(masks, text, scale, patch_embeddings=patches, patch_grid=(h, w))
    dense = patches.transpose(1, 2).reshape(b, d, h, w)
    rows = psm.cdt(dense, F.normalize(text.mean(1), dim=-1))
    torch.testing.assert_close(got, 50.0 * F.normalize(masks, dim=-1) @ rows.transpose(1, 2))
    # the layout matters (sine encoding): the transposed grid gives other logits
    assert not torch.allclose(got, psm(masks, text, scale, patch_embeddings=patches, patch_grid=(w, h)))
    with pytest.raises(ValueError, match="patch_grid"):
        psm(masks, text, scale, patch_embeddings=patches)


def test_cdt_panoptic_psm_starts_as_the_plain_cosine():
    """Zero-initialised W, b: t' = t + LN(0) = t, so at one template it scores as the identity PSM."""
    torch.manual_seed(1)
    d = 64
    psm = build_psm("cdt_panoptic", text_dim=d)
    text, masks, patches = F.normalize(torch.randn(6, 1, d), dim=-1), torch.randn(1, 3, d), torch.randn(1, 4, d)
    scale = torch.tensor(math.log(20.0))
    sci = torch.tensor([0, 0, 1, 2, 2, 3])
    got = mask_class_logits(masks, text, sci, 4, psm, scale, patch_embeddings=patches, patch_grid=(2, 2))
    torch.testing.assert_close(got, mask_class_logits(masks, text, sci, 4, IdentityPSM(), scale))
    semantic = mask_class_logits(masks, text, sci, 4, build_psm("cdt", text_dim=d), scale,
                                 patch_embeddings=patches, patch_grid=(2, 2))
    assert not torch.allclose(semantic, got)


def test_patch_grid_of():
    assert patch_grid_of((128, 96), 12) == (4, 3)
    assert patch_grid_of((96, 160), 15) == (3, 5)
    with pytest.raises(ValueError):
        patch_grid_of((128, 96), 13)


# ---------------------------------------------------------------------------------------------------- training
def _config(tmp_path, **maftp):
    config = load_train_config(TINY, output_dir=str(tmp_path), device="cpu", show_progress=False, max_iter=3)
    for key, value in maftp.items():
        setattr(config.maftp, key, value)
    return config


def _probe(trainer):
    """Logits of a fixed batch (GT masks and synthetic proposals) from the trainer's model, no gradient."""
    batch = collate_masks([trainer.dataset[i] for i in range(2)])
    sci = trainer.synonym_class_index
    text = trainer._text_embeddings(torch.arange(len(sci)))
    masks = batch["masks"].float()
    proposals = SyntheticProposals(6, seed=3)(batch["image"], masks)
    model = trainer.model
    with torch.no_grad():
        return model(model.pixel_values(batch["image"]), torch.cat([masks, proposals], 1), text,
                     torch.arange(len(sci)), len(sci))


def _train(config, steps_between=None):
    trainer = Trainer(config)
    before = _probe(trainer)
    psm_before = {k: v.clone() for k, v in trainer.model.psm.state_dict().items()}
    terms = []
    batches = iter(trainer._loader())
    for _ in range(config.max_iter):
        trainer.train_step(next(batches))
        terms.append(dict(trainer.last_loss_terms))
    return trainer, before, psm_before, terms


@pytest.mark.parametrize("option", ["cdt", "ma", "rc"])
def test_each_option_trains_and_changes_the_output(tmp_path, option):
    weights = {"cdt": dict(ce_weight=1.0, ma_weight=0.0, rc_weight=0.0),
               "ma": dict(ce_weight=0.0, ma_weight=1.0, rc_weight=0.0),
               "rc": dict(ce_weight=1.0, ma_weight=0.0, rc_weight=0.1)}[option]
    config = _config(tmp_path, **weights)
    trainer, before, psm_before, terms = _train(config)
    after = _probe(trainer)
    assert float((before - after).abs().max()) > 0.05  # about 1.4-1.7 after 3 steps at lr 1e-4; ~4e-6 at 1e-12
    # the CDT (the PSM) got a gradient from whichever loss ran and moved
    moved = [k for k, v in trainer.model.psm.state_dict().items() if not torch.equal(v, psm_before[k])]
    assert any(k.startswith("cdt.cross_atten.multihead_attn") for k in moved), moved
    if option == "ma":
        assert set(terms[-1]) == {"ma_loss"} and all(t["ma_loss"] > 0 for t in terms)
    if option == "rc":
        assert set(terms[-1]) == {"ce_loss", "rc_loss"}
        assert terms[0]["rc_loss"] == 0.0  # the tuned trunk starts as the frozen copy
        assert terms[-1]["rc_loss"] > 0
        # the teacher is the *base* trunk, not a copy that follows training
        base = Trainer(config).model.classifier.model.visual.trunk
        torch.testing.assert_close(trainer.maftp.teacher.state_dict(), base.state_dict(), rtol=0, atol=0)
        assert not all(torch.equal(a, b) for a, b in zip(trainer.model.classifier.model.visual.trunk.parameters(),
                                                         base.parameters()))
        # its gradient pulls the tuned trunk back: a small step down the RC gradient alone lowers the RC loss
        trunk = trainer.model.classifier.model.visual.trunk
        pixels = trainer.model.pixel_values(collate_masks([trainer.dataset[0]])["image"])
        with torch.no_grad():
            teacher = trainer.maftp.teacher.forward_features(pixels)
        rc = representation_compensation_loss(trunk.forward_features(pixels), teacher)
        trained = [p for p in trunk.parameters() if p.requires_grad]
        grads = torch.autograd.grad(rc, trained)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        with torch.no_grad():
            for p, g in zip(trained, grads):
                p.sub_(1e-3 * g / max(float(torch.cat([x.flatten() for x in grads]).norm()), 1e-12))
            assert representation_compensation_loss(trunk.forward_features(pixels), teacher) < rc


def test_loss_weights_scale_the_terms(tmp_path):
    """The total is ce_weight * CE + ma_weight * MA + rc_weight * RC (a weight of 2 doubles its term)."""
    config = _config(tmp_path, ce_weight=1.0, ma_weight=2.0, rc_weight=0.0)
    trainer = Trainer(config)
    batch = next(iter(trainer._loader()))
    loss = trainer.train_step(batch)
    terms = trainer.last_loss_terms
    assert loss == pytest.approx(terms["ce_loss"] + 2.0 * terms["ma_loss"], rel=1e-5)


def test_maftp_freezes_the_clip_head_and_trains_stem_stages_norm_pre(tmp_path):
    trainer = Trainer(_config(tmp_path))
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    visual = {n for n in trained if n.startswith("classifier.model.visual.")}
    assert visual and all(n.startswith(("classifier.model.visual.trunk.stem", "classifier.model.visual.trunk.stages",
                                        "classifier.model.visual.trunk.norm_pre")) for n in visual)
    assert any(".trunk.stem" in n for n in visual) and any(".trunk.stages" in n for n in visual)
    all_names = {n for n, _ in trainer.model.named_parameters()}
    assert any(n.startswith("classifier.model.visual.head.") for n in all_names)  # exists, but frozen
    assert {n for n in trained if n.startswith("psm.")} == {f"psm.{k}" for k, _ in trainer.model.psm.named_parameters()}
    lrs = {g["lr_multiplier"] for g in trainer.optimizer.param_groups}
    assert lrs == {0.1, 1.0}


def test_resume_with_maftp_options_reproduces_the_run(tmp_path):
    """4 steps against 2 + resume + 2 with CDT, MA (synthetic proposals) and RC on: the same losses and tensors, bit
    for bit (the proposals' draw is checkpointed; the RC teacher is rebuilt from the base weights, not the resumed)."""
    def config(out, **kw):
        c = load_train_config(TINY, output_dir=str(out), device="cpu", show_progress=False, max_iter=4,
                              checkpoint_every=2, **kw)
        c.maftp.ce_weight = 1.0
        return c

    full = Trainer(config(tmp_path / "full"))
    full_losses = full.train(export=False).losses
    resumed = Trainer(config(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoints" / "step_0000002.pth")))
    assert resumed.start_step == 2
    assert resumed.train(export=False).losses == full_losses[2:]
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    base = Trainer(config(tmp_path / "base")).model.classifier.model.visual.trunk.state_dict()
    torch.testing.assert_close(resumed.maftp.teacher.state_dict(), base, rtol=0, atol=0)


def test_rc_refuses_a_vit(tmp_path):
    config = _config(tmp_path)
    config.model_name, config.psm = "tiny-eva", "linear"
    with pytest.raises(ValueError, match="ConvNeXt"):
        Trainer(config)


def test_generator_proposals_follow_the_runtime_chain():
    """A frozen runtime generator (the tiny Mask2Former) gives [B, Q, H, W] probabilities on the training frame."""
    from ovs_ros.preprocess import BranchInput, generator_mask_probs

    source = GeneratorProposals.from_segmenter_config("tiny")
    assert not any(p.requires_grad for p in source.generator.parameters())
    ds = SyntheticMaskDataset(num_images=2, image_size=96, seed=0)
    batch = collate_masks([ds[0], ds[1]])
    images = batch["image"][..., :80, :]  # 80 rows: padded to 96 inside, cropped back
    probs = source(images, batch["masks"][..., :80, :])
    assert probs.shape[:2] == (2, source.generator.config.num_queries) and probs.shape[-2:] == (80, 96)
    assert 0 <= float(probs.min()) and float(probs.max()) <= 1
    gen = source.generator
    mean = torch.tensor(gen.pixel_mean_01).view(1, 3, 1, 1)
    std = torch.tensor(gen.pixel_std_01).view(1, 3, 1, 1)
    x = F.pad((images.float() / 255 - mean) / std, (0, 0, 0, 16))
    with torch.no_grad():
        logits = gen(x).mask_logits
    expected = generator_mask_probs(logits, BranchInput(pixel_values=x, valid_hw=(80, 96)))
    torch.testing.assert_close(probs, expected)


# ---------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("segmenter_config", ["tiny", "maftp_tiny_random"])  # Mask2Former / MAFT+ generator
def test_exported_cdt_runs_in_the_segmenter(tmp_path, monkeypatch, segmenter_config):
    """Train -> export -> the Segmenter builds a CDT PSM from the card, loads the trained tensors, segments; its
    CLIP logits (captured where the ensemble takes them) follow the trained CDT."""
    import ovs_ros.segmenter as segmenter_module
    from ovs_ros.cli import sample_image
    from ovs_ros.segmenter import Segmenter

    config = load_train_config(TINY, output_dir=str(tmp_path / "run"), device="cpu", show_progress=False, max_iter=2)
    trainer = Trainer(config)
    initial_psm = {k: v.clone() for k, v in trainer.model.psm.state_dict().items()}
    result = trainer.train()
    card = result.export["card"]
    overrides = {"classifier.card": str(card), "weights_dir": str(result.export["weights"].parent),
                 "classifier.model_name": "tiny-convnext", "vocabulary": ["cat", "sofa", "stuff:floor"],
                 "classifier.input_short_side": 128}
    segmenter = Segmenter.from_config(segmenter_config, overrides)
    assert isinstance(segmenter.psm, CDTPSM) and not segmenter.psm.cdt.panoptic
    torch.testing.assert_close(segmenter.psm.state_dict(), trainer.model.psm.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(segmenter.classifier.state_dict(), trainer.model.classifier.state_dict(), rtol=0,
                               atol=0)
    captured = []
    ensemble = segmenter_module.ensemble_class_probs

    def spy(clip_logits, *args, **kwargs):
        captured.append(clip_logits.clone())
        return ensemble(clip_logits, *args, **kwargs)

    monkeypatch.setattr(segmenter_module, "ensemble_class_probs", spy)
    image = sample_image("chelsea")
    out = segmenter.segment(image)
    assert out.panoptic.shape == (300, 451)
    # the same Segmenter with the CDT reset to its initial weights scores the masks differently
    base = Segmenter.from_config(segmenter_config, overrides)
    base.psm.load_state_dict(initial_psm)
    base.segment(image)
    trained_logits, base_logits = captured
    assert trained_logits.shape == (segmenter.generator.config.num_queries, 3)
    assert torch.isfinite(trained_logits).all()
    assert float((trained_logits - base_logits).abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------------------- configs
def test_maftp_configs_parse_and_reject_bad_keys(tmp_path):
    tiny = load_train_config(TINY)
    assert (tiny.psm, tiny.scheduler, tiny.maftp.ma_weight, tiny.maftp.rc_weight) == ("cdt", "warmup_poly", 1.0, 0.1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name: tiny-convnext\nmaftp:\n  rc_weigth: 0.1\n")
    with pytest.raises(ConfigError, match="rc_weigth"):
        load_train_config(bad)
    bad.write_text("model_name: tiny-convnext\nmaftp:\n  ma_weight: 1.0\n")
    with pytest.raises(ConfigError, match="proposals"):
        load_train_config(bad)
    bad.write_text("model_name: tiny-convnext\nscheduler: step\n")
    with pytest.raises(ConfigError, match="scheduler"):
        load_train_config(bad)


@pytest.mark.parametrize("size,iters,pretrained", [("b", 60000, "laion_aesthetic_s13b_b82k_augreg"),
                                                   ("l", 55000, "laion2b_s29b_b131k_ft_soup")])
def test_real_maftp_configs_are_maftps_recipe(size, iters, pretrained):
    from ovs_ros.segmenter_config import load_segmenter_config

    c = load_train_config(CONFIGS / f"maftp_convnext_{size}_coco_stuff.yaml")
    assert (c.pretrained, c.max_iter, c.batch_size, c.base_lr, c.clip_lr_multiplier, c.weight_decay) == (
        pretrained, iters, 8, 1e-4, 0.1, 2e-5)
    assert (c.scheduler, c.poly_power, c.warmup_iters, c.grad_clip_norm, c.psm, c.template_set) == (
        "warmup_poly", 0.9, 0, 0.01, "cdt", "t14")
    assert (c.maftp.ce_weight, c.maftp.ma_weight, c.maftp.rc_weight, c.maftp.freeze_clip_head) == (0.0, 1.0, 0.1, True)
    assert (c.data.kind, c.data.vocabulary) == ("coco_stuff", "coco_stuff_171")
    proposals = load_segmenter_config(c.maftp.proposals.segmenter, dict(c.maftp.proposals.overrides))
    assert proposals.generator.card == f"maftp_{size}_coco_stuff"


def test_coco_stuff_dataset_reads_detectron2_label_maps(tmp_path):
    import cv2

    from ovs_training.datasets import COCOStuffDataset

    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "coco" / "stuffthingmaps_detectron2" / "train2017").mkdir(parents=True)
    label = np.full((24, 32), 255, dtype=np.uint8)
    label[:12] = 0  # person
    label[12:, :16] = 170  # the last class
    label[12:, 16:20] = 118
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "coco" / "train2017" / "000000000001.jpg"), image)
    cv2.imwrite(str(tmp_path / "coco" / "stuffthingmaps_detectron2" / "train2017" / "000000000001.png"), label)
    ds = COCOStuffDataset(tmp_path, "train2017")
    assert len(ds) == 1 and len(ds.vocabulary) == 171
    sample = ds[0]
    assert sample["class_ids"].tolist() == [0, 118, 170]
    assert sample["image"].shape == (3, 24, 32) and sample["masks"].shape == (3, 24, 32)
    np.testing.assert_array_equal(sample["masks"][2].numpy(), label == 170)
    assert ds.vocabulary.entries[0].names[0] == "person" and ds.vocabulary.entries[170].dataset_id == 182
    assert not sample["masks"].sum(0).gt(1).any()
    label[0, 0] = 171
    cv2.imwrite(str(tmp_path / "coco" / "stuffthingmaps_detectron2" / "train2017" / "000000000001.png"), label)
    with pytest.raises(ValueError, match="171"):
        ds[0]


@pytest.mark.parametrize("size", ["b", "l"])
def test_maftp_configs_augment_as_maftp_semantic_mapper_with_detectron2_input_defaults(size):
    """MAFT+'s train_semantic_*.yaml set DATASET_MAPPER_NAME mask_former_semantic and no MIN_SIZE_TRAIN / CROP /
    COLOR_AUG_SSD, so detectron2's defaults apply: ResizeShortestEdge((800,), 1333), crop disabled, no color aug."""
    c = load_train_config(CONFIGS / f"maftp_convnext_{size}_coco_stuff.yaml")
    d = c.data
    assert (d.augmentation, d.short_edge_choices, d.max_size, d.color_aug_ssd, d.hflip) == (
        "semantic", [800], 1333, False, True)
    assert d.image_size >= d.max_size  # the crop never cuts: every side is <= max_size after the resize
