"""Evaluation readers on tiny datasets written here in each reference layout (MaskCLIP++ / FC-CLIP `prepare_*`),
and their id mapping against the shipped vocabularies' order. Also holds the writers the CLI tests reuse."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovs_ros.evaluation.datasets import DATASETS, DatasetLayoutError, id2rgb, load_dataset
from ovs_ros.evaluation.datasets.base import load_vocabulary
from ovs_ros.vocabulary import Vocabulary

H, W = 32, 48
SHARED_TABLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "vocabularies"


# ------------------------------------------------------------------------------------------------ writers
def _write_image(path: Path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, quality=95)


def write_panoptic_split(image_dir, pan_dir, json_path, sem_dir, vocabulary, *, num_images=3, seed=0,
                         crowd=False, id_of=None, sem_void=255, image_name=None, label_name=None,
                         instances_json=None, int_ids=False):
    """COCO-format panoptic PNGs + json (+ semantic PNGs made as prepare_coco_semantic_annos_from_panoptic_annos:
    every segment, crowd included, as its class index; unlabeled 255). Returns the per-image class-index maps."""
    rng = np.random.default_rng(seed)
    id_of = id_of or (lambda index: vocabulary[index].dataset_id)
    pan_dir.mkdir(parents=True, exist_ok=True)
    if sem_dir is not None:
        sem_dir.mkdir(parents=True, exist_ok=True)
    annotations, images, semantic_maps, instances = [], [], [], []
    things = np.nonzero(vocabulary.is_thing)[0]
    stuffs = np.nonzero(vocabulary.is_stuff)[0]
    for n in range(num_images):
        stem = f"img_{n:04d}"
        image_id = n + 1 if int_ids else stem  # COCO image ids are ints, ADE's strings
        label_file = f"{stem}.png" if label_name is None else label_name(stem)
        _write_image(image_dir / (f"{stem}.jpg" if image_name is None else image_name(stem)), rng)
        ids = np.zeros((H, W), dtype=np.int64)
        sem = np.full((H, W), sem_void, dtype=np.uint8)
        segments = []
        next_id = 1000 + n * 7  # ids need not be small (COCO ids are rgb2id of a colour)
        for j, cls in enumerate(list(rng.choice(stuffs, 2, replace=False)) + list(rng.choice(things, 3))):
            y0, x0 = int(rng.integers(0, H - 8)), int(rng.integers(0, W - 8))
            region = (slice(y0, y0 + int(rng.integers(6, 20))), slice(x0, x0 + int(rng.integers(6, 30))))
            if j == 0:
                region = (slice(0, H), slice(0, W))
            ids[region] = next_id
            sem[region] = cls
            segments.append({"id": next_id, "category_id": int(id_of(int(cls))),
                             "iscrowd": int(crowd and j == 4), "bbox": [0, 0, 1, 1]})
            next_id += 1
        ids[rng.random((H, W)) < 0.05] = 0  # unlabeled pixels
        sem[ids == 0] = sem_void
        present = set(np.unique(ids).tolist())
        segments = [dict(s, area=int((ids == s["id"]).sum())) for s in segments if s["id"] in present]
        Image.fromarray(id2rgb(ids)).save(pan_dir / label_file)
        if sem_dir is not None:
            Image.fromarray(sem).save(sem_dir / label_file)
        annotations.append({"image_id": image_id, "file_name": label_file, "segments_info": segments})
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": W, "height": H})
        for seg in segments:  # instance annotations as prepare_ade20k_ins_seg.py writes them (RLE, things only)
            index = next(i for i in range(len(vocabulary)) if id_of(i) == seg["category_id"])
            if vocabulary[index].is_thing:
                from pycocotools import mask as mask_util

                rle = mask_util.encode(np.asfortranarray((ids == seg["id"])[:, :, None].astype(np.uint8)))[0]
                rle["counts"] = rle["counts"].decode()
                instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": seg["category_id"],
                                  "iscrowd": seg["iscrowd"], "segmentation": rle, "area": int(mask_util.area(rle)),
                                  "bbox": [float(v) for v in mask_util.toBbox(rle)]})
        semantic_maps.append(np.where(ids == 0, sem_void, sem).astype(np.int64))
    categories = [{"id": int(id_of(i)), "name": e.label, "isthing": int(e.is_thing)} for i, e in enumerate(vocabulary)]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    if instances_json is not None:
        things = [c for c in categories if c["isthing"]]
        instances_json.write_text(json.dumps({"images": images, "annotations": instances, "categories": things}))
    return semantic_maps


def write_semantic_split(image_dir, gt_dir, ext, num_classes, ignore_label, *, num_images=3, seed=0):
    rng = np.random.default_rng(seed)
    gt_dir.mkdir(parents=True, exist_ok=True)
    maps = []
    for n in range(num_images):
        stem = f"img_{n:04d}"
        _write_image(image_dir / f"{stem}.jpg", rng)
        label = rng.integers(0, num_classes, (H // 8, W // 8)).repeat(8, 0).repeat(8, 1)
        label[rng.random((H, W)) < 0.1] = ignore_label
        dtype = np.uint16 if ext == "tif" else np.uint8
        Image.fromarray(label.astype(dtype)).save(gt_dir / f"{stem}.{ext}")
        maps.append(label.astype(np.int64))
    return maps


def write_layout(name, root, *, num_images=3, seed=0, vocabulary=None):
    """Write split `name` under `root`; returns (vocabulary, semantic GT maps)."""
    root = Path(root)
    if name == "ade20k_150_panoptic":
        vocab = load_vocabulary(vocabulary, "ade20k_150")
        base = root / "ADEChallengeData2016"
        maps = write_panoptic_split(base / "images/validation", base / "ade20k_panoptic_val",
                                    base / "ade20k_panoptic_val.json", base / "annotations_detectron2/validation",
                                    vocab, num_images=num_images, seed=seed,
                                    instances_json=base / "ade20k_instance_val.json")
        return vocab, maps
    if name == "coco_panoptic":
        vocab = load_vocabulary(vocabulary, "coco_panoptic")
        base = root / "coco"
        maps = write_panoptic_split(base / "val2017", base / "panoptic_val2017",
                                    base / "annotations/panoptic_val2017.json", base / "panoptic_semseg_val2017",
                                    vocab, num_images=num_images, seed=seed, crowd=True, int_ids=True,
                                    instances_json=base / "annotations/instances_val2017.json")
        return vocab, maps
    if name == "cityscapes_panoptic":
        vocab = load_vocabulary(vocabulary, "cityscapes")
        base = root / "cityscapes"
        maps = write_panoptic_split(base / "leftImg8bit/val", base / "gtFine/cityscapes_panoptic_val",
                                    base / "gtFine/cityscapes_panoptic_val.json", None, vocab, num_images=num_images,
                                    seed=seed, crowd=True, image_name=lambda stem: f"frankfurt/{stem}_leftImg8bit.png",
                                    label_name=lambda stem: f"{stem}_gtFine_panoptic.png")
        return vocab, maps
    if name == "mapillary_vistas_panoptic":
        vocab = load_vocabulary(vocabulary, "mapillary_vistas")
        base = root / "mapillary_vistas/validation"
        maps = write_panoptic_split(base / "images", base / "panoptic", base / "panoptic_2018.json", base / "labels",
                                    vocab, num_images=num_images, seed=seed, sem_void=65)
        return vocab, maps
    spec = {
        "ade20k_150": ("ADEChallengeData2016/images/validation",
                       "ADEChallengeData2016/annotations_detectron2/validation", "png", 150, 255),
        "ade20k_847": ("ADE20K_2021_17_01/images_detectron2/validation",
                       "ADE20K_2021_17_01/annotations_detectron2/validation", "tif", 847, 65535),
        "coco_stuff_171": ("coco/val2017", "coco/stuffthingmaps_detectron2/val2017", "png", 171, 255),
        "pascal_context_59": ("pascal_ctx_d2/images/validation", "pascal_ctx_d2/annotations_ctx59/validation", "png",
                              59, 255),
        "pascal_context_459": ("pascal_ctx_d2/images/validation", "pascal_ctx_d2/annotations_ctx459/validation",
                               "tif", 459, 65535),
        "pascal_voc_21": ("pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal21/validation", "png",
                          21, 255),
        "pascal_voc_20": ("pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal20/validation", "png",
                          20, 255),
    }[name]
    maps = write_semantic_split(root / spec[0], root / spec[1], spec[2], spec[3], spec[4], num_images=num_images,
                                seed=seed)
    return None, maps


def synthetic_vocabulary(n):
    return Vocabulary.from_strings([f"class {i}" for i in range(n)], max_classes=100000)


def _table(name):
    path = SHARED_TABLES / f"{name}.tsv"
    if not path.is_file():
        pytest.skip(f"benchmark table {path} not available")
    return path


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_reader_reads_its_layout(name, tmp_path):
    extra = {"ade20k_847": synthetic_vocabulary(847), "pascal_context_459": synthetic_vocabulary(459)}.get(name)
    _, maps = write_layout(name, tmp_path, vocabulary=None if extra is None else extra)
    ds = load_dataset(name, tmp_path, extra)
    assert ds.name == name and len(ds) == 3
    expected_ids = ["1", "2", "3"] if name == "coco_panoptic" else ["img_0000", "img_0001", "img_0002"]  # COCO: ints
    assert [s.image_id for s in ds.samples] == expected_ids
    for sample, expected in zip(ds.samples, maps):
        assert sample.load_image().shape == (H, W, 3)
        if ds.has_semantic:
            np.testing.assert_array_equal(sample.load_semantic(), expected)
        if ds.has_panoptic:
            ids = sample.load_panoptic()
            listed = {s.id for s in sample.segments}
            assert set(np.unique(ids).tolist()) - {0} == listed
            for seg in sample.segments:  # panoptic class index agrees with the semantic label of its pixels
                assert seg.area == int((ids == seg.id).sum())
                assert set(np.unique(expected[ids == seg.id]).tolist()) == {seg.category}
    assert ds.ignore_label == {"ade20k_847": 65535, "pascal_context_459": 65535, "mapillary_vistas_panoptic": 65}.get(
        name, 255)
    assert ds.has_panoptic == name.endswith("panoptic")


def test_street_scene_ids_map_to_the_vocabulary_order(tmp_path):
    write_layout("cityscapes_panoptic", tmp_path, num_images=2)
    city = load_dataset("cityscapes_panoptic", tmp_path)
    assert city.samples[0].image_path.name == "img_0000_leftImg8bit.png" and not city.has_semantic
    # Cityscapes: label ids, rows in trainId order (road 7 -> 0, ..., bicycle 33 -> 18); 8 things
    assert [city.vocabulary[i].dataset_id for i in (0, 1, 11, 18)] == [7, 8, 24, 33]
    assert (city.vocabulary.labels[0], city.vocabulary.labels[11]) == ("road", "person")
    assert city.is_thing.count(True) == 8 and city.is_thing[11:] == (True,) * 8
    write_layout("mapillary_vistas_panoptic", tmp_path, num_images=1)
    mv = load_dataset("mapillary_vistas_panoptic", tmp_path)
    assert [mv.vocabulary[i].dataset_id for i in (0, 64)] == [1, 65] and mv.is_thing.count(True) == 37
    (tmp_path / "cityscapes/leftImg8bit/val/frankfurt/img_0001_leftImg8bit.png").unlink()
    with pytest.raises(DatasetLayoutError, match="img_0001_leftImg8bit.png"):
        load_dataset("cityscapes_panoptic", tmp_path)


def test_coco_ids_map_to_the_vocabulary_order(tmp_path):
    vocab, _ = write_layout("coco_panoptic", tmp_path, num_images=2)
    ds = load_dataset("coco_panoptic", tmp_path)
    assert len(ds.vocabulary) == 133 and ds.is_thing.count(True) == 80
    info = json.loads((tmp_path / "coco/annotations/panoptic_val2017.json").read_text())
    name_of = {c["id"]: c["name"] for c in info["categories"]}
    for sample, ann in zip(ds.samples, info["annotations"]):
        for seg, raw in zip(sample.segments, ann["segments_info"]):
            assert ds.vocabulary.labels[seg.category] == name_of[raw["category_id"]]
            assert seg.iscrowd == bool(raw["iscrowd"])
    assert any(seg.iscrowd for s in ds.samples for seg in s.segments)
    # facts of the COCO panoptic category table (panopticapi / detectron2 COCO_CATEGORIES order)
    labels = ds.vocabulary.labels
    assert (labels[0], labels[79], labels[80], labels[132]) == ("person", "toothbrush", "banner", "rug")
    assert [ds.vocabulary[i].dataset_id for i in (0, 79, 80, 132)] == [1, 90, 92, 200]
    assert ds.is_thing[:80] == (True,) * 80 and not any(ds.is_thing[80:])


def test_ade_and_pascal_label_values_are_the_vocabulary_order(tmp_path):
    ade = load_vocabulary(None, "ade20k_150")
    assert (ade.labels[0], ade.labels[12], ade.labels[149]) == ("wall", "person", "flag")
    assert [e.dataset_id for e in ade] == list(range(150)) and int(ade.is_thing.sum()) == 100
    pc59 = load_vocabulary(None, "pascal_context_59")
    assert (pc59.labels[0], pc59.labels[58]) == ("aeroplane", "wood piece")
    voc21 = load_vocabulary(None, "pascal_voc_21")
    assert (voc21.labels[0], voc21.labels[1], voc21.labels[20]) == ("background", "aeroplane", "tvmonitor")
    write_layout("pascal_voc_20", tmp_path, num_images=1)
    voc20 = load_dataset("pascal_voc_20", tmp_path).vocabulary
    assert voc20.labels == voc21.labels[1:]  # VOC-20 value v is VOC-21 class v + 1


def test_full_vocabularies_from_the_benchmark_tables(tmp_path):
    a847 = load_vocabulary(_table("ade20k_847"), "ade20k_847")
    assert len(a847) == 847 and a847.labels[0] == "wall"
    pc459 = load_vocabulary(_table("pascal_context_459"), "pascal_context_459")
    assert len(pc459) == 459 and (pc459.labels[0], pc459.labels[1]) == ("accordion", "aeroplane")
    write_layout("ade20k_847", tmp_path, num_images=1)
    assert load_dataset("ade20k_847", tmp_path, _table("ade20k_847")).vocabulary == a847


def test_missing_layout_and_wrong_vocabulary_are_clear_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="ADEChallengeData2016/images/validation"):
        load_dataset("ade20k_150_panoptic", tmp_path)
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="ade20k_panoptic_val"):
        load_dataset("ade20k_150_panoptic", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("ade21k", tmp_path)
    write_layout("pascal_context_59", tmp_path, num_images=1)
    with pytest.raises(ValueError, match="59 classes"):
        load_dataset("pascal_context_59", tmp_path, synthetic_vocabulary(60))
    (tmp_path / "pascal_ctx_d2/images/validation/img_0000.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="has no image"):
        load_dataset("pascal_context_59", tmp_path)


def test_json_category_outside_the_vocabulary_is_an_error(tmp_path):
    write_layout("ade20k_150_panoptic", tmp_path, num_images=1)
    path = tmp_path / "ADEChallengeData2016/ade20k_panoptic_val.json"
    info = json.loads(path.read_text())
    info["annotations"][0]["segments_info"][0]["category_id"] = 999
    path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="unknown category 999"):
        load_dataset("ade20k_150_panoptic", tmp_path)
