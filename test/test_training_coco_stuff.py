"""ovs_training: MaskCLIP++'s COCO-Stuff `_wtext` recipe: the `mask_former_semantic` mapper against a literal
re-statement of detectron2's transforms, the COCO-Stuff reader (the evaluation layer's), batch padding as
MaskCLIP++'s `PaddedList`, and the recipe config against the runtime card; CPU only, tiny random-weight models."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training"))  # ovs_training without installing it

pytest.importorskip("open_clip")
pytest.importorskip("timm")

from ovs_ros.config_utils import ConfigError  # noqa: E402
from ovs_ros.models.cards import ModelCard  # noqa: E402
from ovs_training.config import DataConfig, load_train_config  # noqa: E402
from ovs_training.datasets import COCOStuffDataset, collate_masks  # noqa: E402
from ovs_training.semantic_augmentation import SemanticAugmentation, shortest_edge_shape  # noqa: E402
from ovs_training.trainer import Trainer  # noqa: E402

CONFIGS = REPO / "training" / "configs"
WTEXT = CONFIGS / "maskclippp_eva02_l14_336_wtext_coco_stuff.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------- the reference, restated
class _Draws:
    """The reference's global RNG calls (numpy's and python's `random`) answered from one Generator, in order."""

    def __init__(self, rng):
        self.rng = rng

    # numpy.random
    def choice(self, seq):
        return self.rng.choice(seq)

    def randint(self, n):  # np.random.randint(n)
        return self.rng.integers(n)

    def np_uniform(self, low=0.0, high=1.0):
        return self.rng.uniform(low, high)

    # python random
    def randrange(self, n):
        return self.rng.integers(n)

    def uniform(self, a, b):
        return self.rng.uniform(a, b)

    def py_randint(self, a, b):  # random.randint: both ends included
        return self.rng.integers(a, b + 1)


def reference_semantic_mapper(image, sem_seg, draws, *, short_edges, max_size, crop, max_area, ignore=255):
    """Literal re-statement of MaskCLIP++'s `MaskFormerSemanticDatasetMapper` training path over detectron2's
    `ResizeShortestEdge` -> `RandomCrop_CategoryAreaConstraint` -> PointRend `ColorAugSSDTransform` -> `RandomFlip`,
    then the per-class masks. `image` HxWx3 uint8 RGB, `sem_seg` float64 as `utils.read_image(...).astype("double")`."""
    import cv2
    import torch.nn.functional as F
    from PIL import Image

    # ResizeShortestEdge.get_transform ("choice") + get_output_shape
    h, w = image.shape[:2]
    size = draws.choice(short_edges)
    scale = size * 1.0 / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    neww = int(neww + 0.5)
    newh = int(newh + 0.5)
    # ResizeTransform.apply_image: uint8 via PIL; the float64 segmentation via F.interpolate "nearest"
    image = np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))
    seg = torch.from_numpy(np.ascontiguousarray(sem_seg))
    seg = seg.view(list(seg.shape[:2]) + [1, 1]).permute(2, 3, 0, 1)
    sem_seg = F.interpolate(seg, (newh, neww), mode="nearest", align_corners=None).permute(2, 3, 0, 1)
    sem_seg = sem_seg.view(newh, neww).numpy()
    # RandomCrop_CategoryAreaConstraint.get_transform
    h, w = sem_seg.shape
    ch, cw = min(crop, h), min(crop, w)
    if max_area >= 1.0:
        y0 = draws.randint(h - ch + 1)
        x0 = draws.randint(w - cw + 1)
    else:
        for _ in range(10):
            y0 = draws.randint(h - ch + 1)
            x0 = draws.randint(w - cw + 1)
            sem_seg_temp = sem_seg[y0: y0 + ch, x0: x0 + cw]
            labels, cnt = np.unique(sem_seg_temp, return_counts=True)
            cnt = cnt[labels != ignore]
            if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * max_area:
                break
    image, sem_seg = image[y0:y0 + ch, x0:x0 + cw], sem_seg[y0:y0 + ch, x0:x0 + cw]

    # ColorAugSSDTransform(img_format="RGB").apply_image
    def convert(img, alpha=1, beta=0):
        img = img.astype(np.float32) * alpha + beta
        img = np.clip(img, 0, 255)
        return img.astype(np.uint8)

    def brightness(img):
        if draws.randrange(2):
            return convert(img, beta=draws.uniform(-32, 32))
        return img

    def contrast(img):
        if draws.randrange(2):
            return convert(img, alpha=draws.uniform(0.5, 1.5))
        return img

    def saturation(img):
        if draws.randrange(2):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 1] = convert(img[:, :, 1], alpha=draws.uniform(0.5, 1.5))
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img

    def hue(img):
        if draws.randrange(2):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 0] = (img[:, :, 0].astype(int) + draws.py_randint(-18, 18)) % 180
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img

    img = np.ascontiguousarray(image[:, :, [2, 1, 0]])
    img = brightness(img)
    if draws.randrange(2):
        img = contrast(img)
        img = saturation(img)
        img = hue(img)
    else:
        img = saturation(img)
        img = hue(img)
        img = contrast(img)
    image = img[:, :, [2, 1, 0]]
    # RandomFlip(): horizontal, prob 0.5
    if draws.np_uniform(0.0, 1.0) < 0.5:
        image, sem_seg = np.flip(image, axis=1), np.flip(sem_seg, axis=1)
    sem_seg = sem_seg.astype("long")
    classes = np.unique(sem_seg)
    classes = classes[classes != ignore]
    masks = [sem_seg == c for c in classes]
    return image, np.stack(masks) if masks else np.zeros((0,) + sem_seg.shape, bool), classes


def _sample(h, w, seed, num_classes=171):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 6, (h // 4 + 1, w // 4 + 1)).repeat(4, 0).repeat(4, 1)[:h, :w] * 17 % num_classes
    label[rng.random((h, w)) < 0.05] = 255
    return image, label.astype(np.int64)


@pytest.mark.parametrize("case", [
    dict(hw=(90, 130), short_edges=[40, 56, 72], max_size=4096, crop=48, max_area=1.0),
    dict(hw=(120, 70), short_edges=[30, 100], max_size=110, crop=64, max_area=1.0),  # long-side cap, crop > size
    dict(hw=(80, 100), short_edges=[64, 90], max_size=4096, crop=40, max_area=0.4),  # category-area constraint
])
def test_semantic_mapper_is_the_reference_mask_former_semantic_mapper(case):
    aug = SemanticAugmentation(case["short_edges"], max_size=case["max_size"], crop_size=case["crop"],
                               single_category_max_area=case["max_area"])
    sizes = set()
    for seed in range(12):
        image, label = _sample(*case["hw"], seed)
        sample = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "semantic": torch.from_numpy(label)}
        ours = aug(sample, np.random.default_rng([3, seed]))
        ref_image, ref_masks, ref_classes = reference_semantic_mapper(
            image, label.astype(np.float64), _Draws(np.random.default_rng([3, seed])),
            short_edges=case["short_edges"], max_size=case["max_size"], crop=case["crop"],
            max_area=case["max_area"])
        np.testing.assert_array_equal(ours["image"].permute(1, 2, 0).numpy(), ref_image)
        np.testing.assert_array_equal(ours["class_ids"].numpy(), ref_classes)
        np.testing.assert_array_equal(ours["masks"].numpy(), ref_masks)
        assert 255 not in ours["class_ids"].tolist() and ours["masks"].any((1, 2)).all()  # present classes only
        sizes.add(tuple(ours["image"].shape[-2:]))
    assert len(sizes) > 1 or case["crop"] < 56  # the draws reached more than one output size where they can


def test_nearest_label_resize_is_torch_nearest_not_pil_nearest():
    """detectron2 resizes the float64 label map with F.interpolate; PIL's NEAREST picks other pixels, so a port
    through PIL would move class boundaries (the difference this test pins)."""
    from PIL import Image

    label = np.arange(7 * 11, dtype=np.float64).reshape(7, 11)
    ours = SemanticAugmentation([5], max_size=4096, crop_size=100, color_aug_ssd=False, hflip=False)
    sample = {"image": torch.zeros(3, 7, 11, dtype=torch.uint8), "semantic": torch.from_numpy(label.astype(np.int64))}
    out = ours(sample, np.random.default_rng(0))
    nh, nw = shortest_edge_shape(7, 11, 5, 4096)
    got = np.zeros((nh, nw), dtype=np.int64)
    for c, m in zip(out["class_ids"].numpy(), out["masks"].numpy()):
        got[m] = c
    pil = np.asarray(Image.fromarray(label.astype(np.uint8)).resize((nw, nh), Image.NEAREST)).astype(np.int64)
    torch_nearest = torch.nn.functional.interpolate(torch.from_numpy(label)[None, None], (nh, nw),
                                                    mode="nearest")[0, 0].numpy().astype(np.int64)
    np.testing.assert_array_equal(got, torch_nearest)
    assert (pil != torch_nearest).any()


def test_short_edges_default_is_the_wtext_min_size_train():
    assert DataConfig().short_edge_choices == [int(x * 0.1 * 448) for x in range(3, 20)]
    assert load_train_config(WTEXT).data.short_edge_choices == [int(x * 0.1 * 448) for x in range(3, 20)]


# ---------------------------------------------------------------------------------------------------- reader
def _write_coco_stuff(root: Path, sizes=((60, 84), (72, 48), (56, 56)), split="train2017"):
    from PIL import Image

    images, labels = root / "coco" / split, root / "coco" / "stuffthingmaps_detectron2" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    maps = []
    for i, (h, w) in enumerate(sizes):
        image, label = _sample(h, w, 100 + i)
        Image.fromarray(image).save(images / f"{i:012d}.jpg", quality=95)
        Image.fromarray(label.astype(np.uint8)).save(labels / f"{i:012d}.png")
        maps.append(label)
    return maps


def test_coco_stuff_reader_gives_one_mask_per_present_class(tmp_path):
    maps = _write_coco_stuff(tmp_path)
    ds = COCOStuffDataset(tmp_path, "train2017")
    assert len(ds) == 3 and len(ds.vocabulary) == 171 and ds.vocabulary.labels[0] == "person"
    for i, label in enumerate(maps):
        s = ds[i]
        np.testing.assert_array_equal(s["semantic"].numpy(), label)
        present = sorted(set(np.unique(label).tolist()) - {255})
        assert s["class_ids"].tolist() == present
        for c, m in zip(present, s["masks"].numpy()):
            np.testing.assert_array_equal(m, label == c)
    bad = tmp_path / "coco" / "stuffthingmaps_detectron2" / "train2017" / f"{1:012d}.png"
    from PIL import Image

    Image.fromarray(np.full((72, 48), 200, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r"label values \[200\]"):
        ds[1]


def test_collate_pads_like_padded_list_and_the_model_zeroes_the_padding(tmp_path):
    a = {"image": torch.full((3, 20, 30), 200, dtype=torch.uint8), "masks": torch.ones(2, 20, 30, dtype=torch.bool),
         "class_ids": torch.tensor([1, 2])}
    b = {"image": torch.full((3, 28, 16), 10, dtype=torch.uint8), "masks": torch.ones(1, 28, 16, dtype=torch.bool),
         "class_ids": torch.tensor([0])}
    batch = collate_masks([a, b])
    assert batch["image"].shape == (2, 3, 28, 30) and batch["masks"].shape == (2, 2, 28, 30)
    assert batch["image_sizes"].tolist() == [[20, 30], [28, 16]]
    assert not batch["masks"][0, :, 20:].any() and not batch["masks"][1, :, :, 16:].any()
    assert batch["class_ids"].tolist() == [[1, 2], [0, -1]]
    trainer = Trainer(load_train_config(CONFIGS / "tiny_synthetic.yaml", output_dir=str(tmp_path / "r"),
                                        device="cpu", show_progress=False, max_iter=1))
    values = trainer.model.pixel_values(batch["image"], batch["image_sizes"])
    assert (values[0, :, 20:] == 0).all() and (values[1, :, :, 16:] == 0).all()
    assert (values[0, :, :20, :30] != 0).all() and (values[1, :, :28, :16] != 0).all()
    stride = trainer.model.classifier.size_divisibility
    padded, masks = trainer.model.pad_to_stride(values, batch["masks"].float())
    assert padded.shape[-2] % stride == 0 and padded.shape[-1] % stride == 0 and masks.shape[-2:] == padded.shape[-2:]
    torch.testing.assert_close(padded[..., :28, :30], values)
    assert padded[..., 28:, :].abs().sum() == 0 and masks[..., 28:, :].sum() == 0


# ---------------------------------------------------------------------------------------------------- recipe
def test_wtext_recipe_is_maskclippp_and_matches_the_runtime_card():
    import open_clip

    c = load_train_config(WTEXT)
    assert (c.model_name, c.pretrained, c.input_short_side, c.template_set, c.psm, c.train_text) == (
        "EVA02-L-14-336", "merged2b_s6b_b61k", 392, "t1", "linear", True)
    assert (c.clip_lr_multiplier, c.text_lr_multiplier, c.base_lr, c.lr_end_multiplier, c.weight_decay,
            c.grad_clip_norm, c.max_iter, c.batch_size, c.checkpoint_every, c.ignore_empty_masks) == (
        0.01, 0.01, 2e-4, 1e-5 / 2e-4, 0.05, 0.01, 20000, 4, 4000, True)
    d = c.data
    assert (d.kind, d.augmentation, d.image_size, d.max_size, d.single_category_max_area, d.color_aug_ssd,
            d.hflip, d.vocabulary) == ("coco_stuff", "semantic", 448, 4096, 1.0, True, True, "coco_stuff_171")
    assert c.pretrained in open_clip.list_pretrained_tags_by_model(c.model_name)
    card = ModelCard.from_yaml(REPO / "models" / "maskclippp_eva02_l14_336_wtext_coco_stuff.yaml")
    assert (card.architecture, card.base_clip_pretrained, card.psm, card.template_set, card.input_short_side,
            card.text_tower_tuned) == (c.model_name, c.pretrained, c.psm, c.template_set, c.input_short_side, True)
    assert (card.ensemble_on, card.ensemble_alpha, card.ensemble_beta) == (c.ensemble_on, c.ensemble_alpha,
                                                                          c.ensemble_beta) == (True, 0.9, 1.0)


def test_semantic_augmentation_needs_semantic_labels():
    with pytest.raises(ConfigError, match="kind coco_stuff"):
        DataConfig(kind="synthetic", augmentation="semantic")
    with pytest.raises(ConfigError, match="data.root is required"):
        DataConfig(kind="coco_stuff", augmentation="semantic")


def test_coco_stuff_config_trains_through_the_semantic_mapper_on_a_written_layout(tmp_path):
    """kind coco_stuff -> the reader + the semantic mapper (crops smaller than the target, so the batch pads)
    feed the loop; text tower tuned (`_wtext`), 2 steps, batch 2."""
    _write_coco_stuff(tmp_path)
    config = load_train_config(CONFIGS / "tiny_synthetic.yaml", output_dir=str(tmp_path / "run"), device="cpu",
                               show_progress=False, max_iter=2, batch_size=2, train_text=True,
                               data={"kind": "coco_stuff", "root": str(tmp_path), "split": "train2017",
                                     "vocabulary": "coco_stuff_171", "image_size": 48,
                                     "augmentation": "semantic", "short_edge_choices": [40, 64]})
    trainer = Trainer(config)
    assert isinstance(trainer.dataset, COCOStuffDataset) and len(trainer.vocabulary) == 171
    batch = next(iter(trainer._loader()))
    assert batch["image"].shape[-2:] == (48, 48) and batch["image_sizes"].max() <= 48
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    losses = trainer.train(export=False).losses
    assert len(losses) == 2 and all(np.isfinite(losses))
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(".text." in n or "text" in n.split(".")[1] for n in changed), changed
