"""ovs_training: the MaskCLIP++ COCO-panoptic recipe exact (LSJ, data stream seeding, fp32 text, PSM dropout, hang
guard), exact resume, and the shipped recipe configs; CPU only, tiny random-weight models."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training"))  # ovs_training without installing it

pytest.importorskip("open_clip")
pytest.importorskip("timm")

from ovs_ros.models.cards import ModelCard  # noqa: E402
from ovs_ros.text_cache import TextEmbeddingCache  # noqa: E402
from ovs_training.config import load_train_config  # noqa: E402
from ovs_training.datasets import COCOPanopticDataset, LargeScaleJitter, SyntheticMaskDataset  # noqa: E402
from ovs_training.sampling import TrainingStream, epoch_permutation  # noqa: E402
from ovs_training.trainer import Trainer  # noqa: E402

CONFIGS = REPO / "training" / "configs"
TINY = CONFIGS / "tiny_synthetic.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "run"), device="cpu", show_progress=False, max_iter=6)
    base.update(overrides)
    return load_train_config(TINY, **base)


# ---------------------------------------------------------------------------------------------------- LSJ
def _rgb2id(color):
    color = color.astype(np.int32)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def reference_coco_panoptic_lsj(image, pan_rgb, segments_info, rng, image_size, min_scale=0.1, max_scale=2.0):
    """Literal re-statement of MaskCLIP++'s `coco_panoptic_lsj` mapper: detectron2 `RandomFlip()` ->
    `ResizeScale(min, max, size, size)` -> `FixedSizeCrop((size, size))` (pad 128, seg pad 255) applied to the
    image and the panoptic PNG, then `rgb2id` and one mask per non-crowd segment; `np.random` is `rng`."""
    from PIL import Image

    # RandomFlip.get_transform: do = self._rand_range() < self.prob -> HFlipTransform.apply_image: np.flip(axis=1)
    if rng.uniform(0, 1.0, []) < 0.5:
        image, pan_rgb = np.flip(image, axis=1), np.flip(pan_rgb, axis=1)
    # ResizeScale.get_transform / _get_resize
    random_scale = rng.uniform(min_scale, max_scale)
    input_size = image.shape[:2]
    target_scale_size = np.multiply((image_size, image_size), random_scale)
    output_scale = np.minimum(target_scale_size[0] / input_size[0], target_scale_size[1] / input_size[1])
    output_size = np.round(np.multiply(input_size, output_scale)).astype(int)
    new_h, new_w = int(output_size[0]), int(output_size[1])
    # ResizeTransform.apply_image (uint8 -> PIL), apply_segmentation = apply_image(interp=NEAREST)
    image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR))
    pan_rgb = np.asarray(Image.fromarray(np.ascontiguousarray(pan_rgb)).resize((new_w, new_h), Image.NEAREST))
    # FixedSizeCrop._get_crop: one uniform for both axes
    input_size = image.shape[:2]
    max_offset = np.maximum(np.subtract(input_size, (image_size, image_size)), 0)
    offset = np.round(np.multiply(max_offset, rng.uniform(0.0, 1.0))).astype(int)
    y0, x0 = offset[0], offset[1]
    image = image[y0:y0 + image_size, x0:x0 + image_size]
    pan_rgb = pan_rgb[y0:y0 + image_size, x0:x0 + image_size]
    # FixedSizeCrop._get_pad -> PadTransform (right / bottom)
    pad_h, pad_w = np.maximum(np.subtract((image_size, image_size), input_size), 0)
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="constant", constant_values=128.0)
    pan_rgb = np.pad(pan_rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="constant", constant_values=255)
    pan_ids = _rgb2id(pan_rgb)
    classes, masks = [], []
    for info in segments_info:
        if not info["iscrowd"]:
            classes.append(info["category_id"])
            masks.append(pan_ids == info["id"])
    return image, np.stack(masks), classes


def _write_panoptic_layout(root: Path, sizes=((60, 90), (84, 50))):
    """COCO panoptic layout with stuff, things (G and B channels), a crowd segment and a segment the PNG lacks."""
    import cv2

    split = "train2017"
    for d in (split, f"panoptic_{split}", "annotations"):
        (root / d).mkdir(parents=True)
    categories = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
                  {"id": 184, "name": "wall-other-merged", "isthing": 0}]
    rng = np.random.default_rng(5)
    images, annotations, pngs = [], [], []
    for i, (h, w) in enumerate(sizes):
        seg = np.zeros((h, w), dtype=np.int64)
        seg[:, : w // 2] = 1000 + i
        seg[5:25, w // 2: w // 2 + 15] = 256 * 3 + 7
        seg[30:50, 3:20] = 65536 * 2 + 5
        seg[h - 8:, w - 10:] = 77  # crowd
        infos = [{"id": 1000 + i, "category_id": 184, "iscrowd": 0},
                 {"id": 256 * 3 + 7, "category_id": 1, "iscrowd": 0},
                 {"id": 65536 * 2 + 5, "category_id": 3, "iscrowd": 0}, {"id": 77, "category_id": 1, "iscrowd": 1},
                 {"id": 4242, "category_id": 3, "iscrowd": 0}]  # listed, but not in the PNG
        rgb = np.stack([seg % 256, seg // 256 % 256, seg // 65536], -1).astype(np.uint8)
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / f"panoptic_{split}" / f"{i:06d}.png"), rgb[..., ::-1])
        cv2.imwrite(str(root / split / f"{i:06d}.png"), image[..., ::-1])
        images.append({"id": i, "file_name": f"{i:06d}.png", "height": h, "width": w})
        annotations.append({"image_id": i, "file_name": f"{i:06d}.png", "segments_info": infos})
        pngs.append((image, rgb, infos))
    with (root / "annotations" / f"panoptic_{split}.json").open("w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return split, pngs


def test_lsj_is_the_reference_coco_panoptic_lsj_mapper(tmp_path):
    """Same draws -> the same image bytes, masks and classes as the reference mapper, over flips, up-scales
    (random crop) and down-scales (pad 128 / void); crowd dropped; a segment absent from the crop stays, empty."""
    split, pngs = _write_panoptic_layout(tmp_path)
    ds = COCOPanopticDataset(tmp_path, split)
    cat_of_class = [e.dataset_id for e in ds.vocabulary.entries]
    lsj = LargeScaleJitter(64)
    seen = {"flip": 0, "pad": 0, "crop": 0}
    for index, (image, rgb, infos) in enumerate(pngs):
        for seed in range(12):
            ours = lsj(ds[index], np.random.default_rng([seed, index]))
            ref_image, ref_masks, ref_classes = reference_coco_panoptic_lsj(
                image, rgb, infos, np.random.default_rng([seed, index]), 64)
            assert torch.equal(ours["image"], torch.from_numpy(ref_image.copy()).permute(2, 0, 1))
            assert torch.equal(ours["masks"], torch.from_numpy(ref_masks))
            assert [cat_of_class[c] for c in ours["class_ids"].tolist()] == ref_classes
            draws = np.random.default_rng([seed, index]).uniform(size=3)
            seen["flip"] += draws[0] < 0.5
            pad = (ref_image[-1] == 128).all() or (ref_image[:, -1] == 128).all()
            seen["pad" if pad else "crop"] += 1
    assert min(seen.values()) > 0, seen
    assert not ours["masks"][-1].any()  # the segment that the PNG lacks: an empty mask, as in the reference


def test_lsj_pads_image_128_and_masks_void():
    sample = SyntheticMaskDataset(1, 96, seed=0)[0]

    class Draws:  # no flip, scale 0.5 -> 48 x 48 inside a 96 x 96 canvas
        def __init__(self):
            self.values = iter([0.9, 0.5, 0.3])

        def uniform(self, low=0.0, high=1.0, size=None):
            return next(self.values)

    out = LargeScaleJitter(96, min_scale=0.5, max_scale=0.5)(sample, Draws())
    assert out["image"].shape == (3, 96, 96)
    assert bool((out["image"][:, 48:, :] == 128).all()) and bool((out["image"][:, :, 48:] == 128).all())
    assert not out["masks"][:, 48:, :].any() and not out["masks"][:, :, 48:].any()
    assert bool(out["masks"][:, :48, :48].any(0).all())  # the synthetic masks tile the image: no void inside


# ---------------------------------------------------------------------------------------------------- data stream
class OneImage(torch.utils.data.Dataset):
    """Every index is the same image: identical augmentation draws would give identical outputs."""

    def __init__(self, n=8):
        self.base = SyntheticMaskDataset(1, 96, seed=3)
        self.vocabulary = self.base.vocabulary
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return self.base[0]


def _images(trainer, steps, start=0):
    it = iter(trainer._loader(start))
    return [next(it)["image"] for _ in range(steps)]


def test_workers_and_epochs_draw_different_augmentations_reproducibly(tmp_path):
    """The old loader gave every worker the same crop/flip stream and restarted it each epoch. Now each of the
    16 samples of 2 epochs (8 images, batch 4, 2 workers) is augmented differently, the same with 0 workers,
    and again the same on a second run; another seed differs."""
    config = tiny_config(tmp_path, data={"kind": "synthetic", "image_size": 96, "num_workers": 2})
    trainer = Trainer(config, dataset=OneImage(8))
    two_workers = torch.cat(_images(trainer, 4))
    flat = two_workers.flatten(1)
    assert len({hash(row.numpy().tobytes()) for row in flat}) == 16
    trainer.config.data.num_workers = 0
    torch.testing.assert_close(torch.cat(_images(trainer, 4)), two_workers, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(_images(trainer, 2, start=2)), two_workers[8:], rtol=0, atol=0)
    other = Trainer(tiny_config(tmp_path, seed=1), dataset=OneImage(8))
    assert not torch.equal(torch.cat(_images(other, 1)), two_workers[:4])


def test_stream_epochs_are_fresh_permutations_and_ranks_split_the_global_batch():
    single = iter(TrainingStream(10, 4, seed=0))
    keys = [next(single) for _ in range(40)]  # 4 epochs
    for epoch in range(4):
        assert [i for e, i in keys if e == epoch] == epoch_permutation(10, 0, epoch).tolist()
    assert len({tuple(epoch_permutation(10, 0, e)) for e in range(4)}) == 4
    ranks = [iter(TrainingStream(10, 4, seed=0, rank=r, world_size=2)) for r in range(2)]
    split = []
    for _ in range(10):  # global batch k = rank 0's 2 keys then rank 1's 2 keys
        split += [next(ranks[0]) for _ in range(2)] + [next(ranks[1]) for _ in range(2)]
    assert split == keys
    resumed = iter(TrainingStream(10, 4, seed=0, start_batch=3))
    assert [next(resumed) for _ in range(8)] == keys[12:20]


def test_a_dataset_smaller_than_one_batch_or_empty_raises_instead_of_hanging(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch of 4"):
        Trainer(tiny_config(tmp_path), dataset=SyntheticMaskDataset(3, 96)).train(export=False)

    class Empty(OneImage):
        def __len__(self):
            return 0

    with pytest.raises(ValueError, match="empty"):
        Trainer(tiny_config(tmp_path), dataset=Empty()).train(export=False)


# ---------------------------------------------------------------------------------------------------- model
def test_frozen_text_embeddings_are_the_fp32_inference_values_even_under_autocast(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    clf = trainer.model.classifier
    with torch.no_grad():
        expected = TextEmbeddingCache(lambda s: clf.encode_text(clf.tokenize(s)), clf.text_fingerprint(),
                                      device="cpu").embed(trainer.vocabulary, "t14").text_embeddings
    rows = torch.arange(len(trainer.synonym_class_index))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = trainer._text_embeddings(rows)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=0)


def test_pseudo_text_psm_attention_dropout_in_training_only(tmp_path):
    """MaskCLIP++ ConvNeXt: `nn.MultiheadAttention(D, 8, dropout=0.1, batch_first=True)`; ours must equal it in
    train mode under the same torch seed, drop nothing in eval mode, and differ from a dropout-free PSM."""
    config = tiny_config(tmp_path, model_name="tiny-convnext", psm="pseudo_text", psm_attention_dropout=0.1,
                         ignore_empty_masks=False)
    psm = Trainer(config).model.psm
    d = psm.img2text.embed_dim
    reference = torch.nn.MultiheadAttention(d, 8, dropout=0.1, batch_first=True)
    reference.load_state_dict(psm.img2text.state_dict())
    text, patches = torch.randn(1, 5, 14, d), torch.randn(2, 9, d)
    psm.train()
    reference.train()
    t = torch.nn.functional.normalize(text[0].mean(1), dim=-1).unsqueeze(0).expand(2, -1, -1)
    kv = psm.img_proj(torch.nn.functional.normalize(patches, dim=-1))
    torch.manual_seed(0)
    ours = psm.img2text(t, kv, kv, need_weights=False)[0]
    torch.manual_seed(0)
    theirs = reference(t, kv, kv, need_weights=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.manual_seed(1)
    assert not torch.allclose(psm.img2text(t, kv, kv, need_weights=False)[0], ours)
    psm.eval()
    with torch.no_grad():
        a, b = psm.refine_text(text[0], patches), psm.refine_text(text[0], patches)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pseudo_text"):
        tiny_config(tmp_path, psm_attention_dropout=0.1)


# ---------------------------------------------------------------------------------------------------- resume
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    """N steps, against N/2 + resume + N/2 from the step-N/2 checkpoint: identical losses and tensors, bit for bit.
    ConvNeXt + PseudoTextPSM with dropout + LSJ: the torch RNG, the synonym generator and the data stream all
    matter (a resume that restored any one of them wrongly would change the losses)."""
    common = dict(model_name="tiny-convnext", psm="pseudo_text", psm_attention_dropout=0.1,
                  ignore_empty_masks=False, max_iter=6, checkpoint_every=3)
    full = Trainer(tiny_config(tmp_path / "full", **common))
    full_result = full.train(export=False)
    checkpoint = tmp_path / "full" / "run" / "checkpoints" / "step_0000003.pth"
    assert checkpoint.is_file()
    resumed = Trainer(tiny_config(tmp_path / "resumed", resume=str(checkpoint), **common))
    assert resumed.start_step == 3
    resumed_result = resumed.train(export=False)
    assert len(resumed_result.losses) == 3
    assert resumed_result.losses == full_result.losses[3:]
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]
    ckpt = torch.load(str(checkpoint), weights_only=False)
    assert {"optimizer", "scheduler", "scaler", "rng", "step", "trained", "data"} <= set(ckpt)
    assert (ckpt["data"]["next_global_batch"], ckpt["data"]["samples_consumed"]) == (3, 12)
    assert {"python", "numpy", "torch", "cuda", "generators"} == set(ckpt["rng"])
    # a checkpoint of other settings would not reproduce its run: refused with the keys that differ
    with pytest.raises(ValueError, match="base_lr"):
        Trainer(tiny_config(tmp_path / "other", resume=str(checkpoint), base_lr=1e-3, **common))
    with pytest.raises(ValueError, match="data position"):  # another dataset: the stream would not continue
        Trainer(tiny_config(tmp_path / "other", resume=str(checkpoint), **common), dataset=SyntheticMaskDataset(9, 96))


# ---------------------------------------------------------------------------------------------------- configs
# MaskCLIP++ configs/coco-pan/<backbone>/maskclippp_coco-pan_<backbone>.yaml, re-stated (corrections.md 18):
# (model, LSJ IMAGE_SIZE, TEST_IMAGE_SIZE, VISUAL_ENCODER_MULTIPLIER, PSM, attention dropout, IGNORE_EMPTY)
REFERENCE_RECIPES = {
    "maskclippp_eva02_b16_coco_panoptic.yaml": ("EVA02-B-16", 512, 384, 0.01, "linear", 0.0, True),
    "maskclippp_eva02_l14_336_coco_panoptic.yaml": ("EVA02-L-14-336", 448, 392, 0.01, "linear", 0.0, True),
    "maskclippp_convnext_b_coco_panoptic.yaml": ("convnext_base_w_320", 1024, 512, 0.001, "pseudo_text", 0.1, False),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_RECIPES))
def test_coco_panoptic_recipe_configs_are_maskclippp_and_match_the_runtime_cards(name):
    import open_clip

    model, train_size, test_size, mult, psm, dropout, ignore_empty = REFERENCE_RECIPES[name]
    c = load_train_config(CONFIGS / name)
    assert (c.model_name, c.data.image_size, c.input_short_side, c.clip_lr_multiplier, c.psm,
            c.psm_attention_dropout, c.ignore_empty_masks) == (model, train_size, test_size, mult, psm, dropout,
                                                               ignore_empty)
    # shared by every COCO-panoptic recipe: SOLVER and INPUT of the reference
    assert (c.base_lr, c.lr_end_multiplier, c.weight_decay, c.grad_clip_norm, c.max_iter, c.batch_size) == (
        2e-4, 0.05, 0.05, 0.01, 20000, 4)
    assert (c.template_set, c.train_text, c.mask_prior_blocks, c.checkpoint_every, c.ce_temperature) == (
        "t14", False, 3, 4000, 1.0)
    assert (c.data.kind, c.data.augmentation, c.data.min_scale, c.data.max_scale, c.data.hflip) == (
        "coco_panoptic", "lsj", 0.1, 2.0, True)
    assert (c.ensemble_on, c.ensemble_alpha, c.ensemble_beta) == (False, 1.0, 1.0)
    assert c.recipe.startswith("maskclippp_coco-pan_")
    assert c.pretrained in open_clip.list_pretrained_tags_by_model(c.model_name)
    # the released MaskCLIP++ model of this recipe, as the runtime's card describes it
    card = ModelCard.from_yaml(REPO / "models" / name)
    assert (card.architecture, card.base_clip_pretrained, card.psm, card.template_set, card.input_short_side) == (
        c.model_name, c.pretrained, c.psm, c.template_set, c.input_short_side)
    assert (card.ensemble_on, card.ensemble_alpha, card.ensemble_beta) == (c.ensemble_on, c.ensemble_alpha,
                                                                          c.ensemble_beta)


# ---------------------------------------------------------------------------------------------------- end to end
def test_coco_panoptic_config_trains_through_lsj_on_a_written_layout(tmp_path):
    """kind coco_panoptic -> the reader + LSJ at the config's target size feed the loop (2 steps, batch 2)."""
    _write_panoptic_layout(tmp_path / "coco")
    config = tiny_config(tmp_path, max_iter=2, batch_size=2,
                         data={"kind": "coco_panoptic", "root": str(tmp_path / "coco"), "split": "train2017",
                               "image_size": 64, "augmentation": "lsj"})
    trainer = Trainer(config)
    assert isinstance(trainer.dataset, COCOPanopticDataset) and len(trainer.dataset) == 2
    batch = next(iter(trainer._loader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["masks"].shape[-2:] == (64, 64)
    losses = trainer.train(export=False).losses
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_convnext_pseudo_text_export_loads_into_the_segmenter(tmp_path):
    """The ConvNeXt recipe's export (all CLIP-V tensors + PseudoTextPSM) loads bit-equal into the runtime, where
    the PSM runs without dropout (eval mode)."""
    from ovs_ros.segmenter import Segmenter

    config = tiny_config(tmp_path, model_name="tiny-convnext", psm="pseudo_text", psm_attention_dropout=0.1,
                         ignore_empty_masks=False, max_iter=2, export_name="tiny_convnext")
    trainer = Trainer(config)
    result = trainer.train()
    card = ModelCard.from_yaml(result.export["card"])
    assert (card.architecture, card.psm) == ("tiny-convnext", "pseudo_text")
    segmenter = Segmenter.from_config("tiny", {"classifier.card": str(result.export["card"]),
                                               "classifier.model_name": "tiny-convnext",
                                               "weights_dir": str(result.export["weights"].parent),
                                               "vocabulary": ["cat", "stuff:floor"],
                                               "classifier.input_short_side": 96})
    assert type(segmenter.psm).__name__ == "PseudoTextPSM" and not segmenter.psm.training
    torch.testing.assert_close(segmenter.psm.state_dict(), trainer.model.psm.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(segmenter.classifier.state_dict(), trainer.model.classifier.state_dict(), rtol=0,
                               atol=0)
