"""`ovs-eval` end to end on tiny datasets written in the reference layouts: the tiny random-weight Segmenter on the
CPU, a ground-truth "oracle" Segmenter that must score 100, resume from the cache, per-image errors, and torchrun
with 2 gloo processes equal to one process."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import ovs_ros.segmenter as segmenter_module
from ovs_ros.eval_cli import main, published_numbers
from ovs_ros.evaluation.datasets import load_dataset
from ovs_ros.results import InstanceResult, PanopticResult, SegmentInfo
from test_eval_datasets import write_layout

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--set", "text_cache_dir=null", "--set", "num_threads=1", "--set", "generator.input_short_side=64",
         "--set", "generator.max_long_side=96", "--set", "classifier.input_short_side=64",
         "--set", "classifier.max_long_side=96"]


def _report(out):
    return json.loads((Path(out) / "metrics.json").read_text())


def _run(tmp_path, dataset, out, *extra):
    return main(["--config", "tiny", "--dataset", dataset, "--root", str(tmp_path / "data"), "--out", str(out),
                 "--device", "cpu", *SMALL, *extra])


def test_tiny_model_end_to_end_on_ade_panoptic(tmp_path):
    write_layout("ade20k_150_panoptic", tmp_path / "data", num_images=3)
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out", "--overlays", "2") == 0
    report = _report(tmp_path / "out")
    assert (report["num_images"], report["evaluated"], report["computed"], report["errors"]) == (3, 3, 3, [])
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "fwIoU", "mACC", "pACC", "mIoU(S)", "mIoU(U)"):
        assert key in report["metrics"], key
    assert report["metrics"]["pACC"] is not None and 0.0 <= report["metrics"]["pACC"] <= 100.0
    assert len(list((tmp_path / "out/overlays").glob("*.jpg"))) == 2
    table = (tmp_path / "out/metrics.md").read_text()
    assert "| PQ |" in table and "| mIoU |" in table and "3 of 3 images evaluated" in table


def test_tiny_model_on_a_16_bit_semantic_set_with_a_given_vocabulary(tmp_path):
    vocab_file = tmp_path / "pc459.yaml"
    vocab_file.write_text(yaml.safe_dump({"classes": [{"names": [f"thing {i}"], "id": i} for i in range(459)]}))
    write_layout("pascal_context_459", tmp_path / "data", num_images=2)
    assert _run(tmp_path, "pascal_context_459", tmp_path / "out", "--vocabulary", str(vocab_file)) == 0
    report = _report(tmp_path / "out")
    assert report["evaluated"] == 2 and "PQ" not in report["metrics"] and report["metrics"]["mIoU"] is not None


# ------------------------------------------------------------------------------------------------ oracle Segmenter
class OracleSegmenter:
    """Returns the ground truth of the image it is given (looked up by pixels), optionally with every class shifted."""

    def __init__(self, dataset, shift=0, shifted=None):
        self.vocabulary = dataset.vocabulary
        self.generator = SimpleNamespace(config=SimpleNamespace(class_synonyms=[["wall"], ["person"]]))
        self.gt = {}
        self.calls = []
        k = dataset.num_classes
        for sample in dataset.samples:
            rgb = sample.load_image()
            shift_here = shift if shifted is None or sample.image_id in shifted else 0
            ids = sample.load_panoptic() if dataset.has_panoptic else None
            sem = sample.load_semantic() if dataset.has_semantic else np.zeros(ids.shape, np.int64)
            ids = np.zeros(sem.shape, np.int64) if ids is None else ids
            segments, panoptic = [], np.zeros(ids.shape, np.int32)
            for n, seg in enumerate(sample.segments or (), start=1):
                panoptic[ids == seg.id] = n
                segments.append(SegmentInfo(n, (seg.category + shift_here) % k, "x", 1.0, True, int(seg.area or 0),
                                            (0, 0, 1, 1)))
            semantic = np.where(sem == dataset.ignore_label, 0, (sem + shift_here) % k).astype(np.int32)
            things = [seg for seg in sample.segments or () if dataset.is_thing[seg.category] and not seg.iscrowd]
            instances = InstanceResult(np.ones(len(things), np.float32),
                                       np.array([(seg.category + shift_here) % k for seg in things], np.int64),
                                       np.array([ids == seg.id for seg in things]).reshape(-1, *ids.shape))
            self.gt[rgb.tobytes()] = PanopticResult(panoptic, semantic, segments, k, semantic_inference=semantic,
                                                    instances=instances)

    def segment(self, rgb, *, semantic=False, instances=False):
        result = self.gt[rgb.tobytes()]
        self.calls.append((semantic, instances))
        return result

    def describe(self):
        return {"oracle": True}


@pytest.fixture
def oracle(monkeypatch):
    def install(dataset, shift=0, shifted=None):
        fake = OracleSegmenter(dataset, shift, shifted)
        monkeypatch.setattr(segmenter_module.Segmenter, "from_config", classmethod(lambda cls, *a, **k: fake))
        return fake
    return install


@pytest.mark.parametrize("name", ["ade20k_150_panoptic", "coco_panoptic", "pascal_voc_20", "cityscapes_panoptic",
                                  "mapillary_vistas_panoptic"])
def test_ground_truth_scores_100_and_shifted_classes_score_0(name, tmp_path, oracle):
    write_layout(name, tmp_path / "data", num_images=3)
    dataset = load_dataset(name, tmp_path / "data")
    if name == "coco_panoptic":
        assert any(s.iscrowd for sample in dataset.samples for s in sample.segments)  # crowd predicted as a segment
    oracle(dataset)
    assert _run(tmp_path, name, tmp_path / "perfect") == 0
    metrics = _report(tmp_path / "perfect")["metrics"]
    expected = ["mIoU", "pACC", "mACC", "fwIoU"] if dataset.has_semantic else []
    expected += ["PQ", "SQ", "RQ", "PQ_th", "PQ_st"] if dataset.has_panoptic else []
    expected += ["AP", "AP50", "AP75"] if dataset.has_instances else []
    assert dataset.has_instances == (name in ("ade20k_150_panoptic", "coco_panoptic"))
    assert set(expected) <= set(metrics) and ("mIoU" in metrics) == dataset.has_semantic
    for key in expected:
        assert metrics[key] == pytest.approx(100.0), key
    oracle(dataset, shift=1)
    assert _run(tmp_path, name, tmp_path / "shifted") == 0
    metrics = _report(tmp_path / "shifted")["metrics"]
    for key in ((["mIoU", "pACC"] if dataset.has_semantic else []) + (["PQ"] if dataset.has_panoptic else [])
                + (["AP"] if dataset.has_instances else [])):
        assert metrics[key] == 0.0, key


def test_resume_from_the_cache_equals_a_fresh_run(tmp_path, oracle):
    write_layout("ade20k_150_panoptic", tmp_path / "data", num_images=4)
    oracle(load_dataset("ade20k_150_panoptic", tmp_path / "data"), shift=1, shifted=("img_0001",))
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out", "--limit", "2") == 0
    first = _report(tmp_path / "out")
    assert (first["computed"], first["from_cache"]) == (2, 0)
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out") == 0
    resumed = _report(tmp_path / "out")
    assert (resumed["computed"], resumed["from_cache"], resumed["evaluated"]) == (2, 2, 4)
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "fresh") == 0
    fresh = _report(tmp_path / "fresh")
    assert 40 < fresh["metrics"]["PQ"] < 100 and 40 < fresh["metrics"]["mIoU"] < 100  # one image of four is wrong
    assert json.dumps(fresh["metrics"]) == json.dumps(resumed["metrics"])
    assert json.dumps(fresh["per_class"]) == json.dumps(resumed["per_class"])
    # a cache made with other settings is refused, not mixed in
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out", "--set", "overlap_threshold=0.5") == 1
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out", "--set", "overlap_threshold=0.5", "--fresh") == 0
    assert _report(tmp_path / "out")["from_cache"] == 0


def test_a_broken_image_is_counted_not_fatal_and_retried(tmp_path, oracle):
    write_layout("pascal_voc_21", tmp_path / "data", num_images=3)
    oracle(load_dataset("pascal_voc_21", tmp_path / "data"))
    (tmp_path / "data/pascal_voc_d2/images/validation/img_0001.jpg").write_bytes(b"not a jpeg")
    assert _run(tmp_path, "pascal_voc_21", tmp_path / "out") == 0
    report = _report(tmp_path / "out")
    assert report["evaluated"] == 2 and [e["image_id"] for e in report["errors"]] == ["img_0001"]
    assert "UnidentifiedImageError" in report["errors"][0]["error"]
    assert "img_0001" in (tmp_path / "out/metrics.md").read_text()
    assert _run(tmp_path, "pascal_voc_21", tmp_path / "out") == 0
    again = _report(tmp_path / "out")
    assert (again["from_cache"], again["computed"], len(again["errors"])) == (2, 0, 1)


def test_published_numbers_come_from_the_cards():
    config = SimpleNamespace(classifier=SimpleNamespace(card="maskclippp_eva02_b16_coco_panoptic"),
                             generator=SimpleNamespace(card=None))
    pub = published_numbers(config, "ade20k_150_panoptic")
    assert (pub["mIoU"]["value"], pub["PQ"]["value"], pub["AP"]["value"]) == (33.8, 24.4, 13.2)
    assert pub["PQ"]["generator"] == "fcclip_convnext_b" and not pub["PQ"]["same_generator"]
    paired = SimpleNamespace(classifier=SimpleNamespace(card="maskclippp_eva02_l14_336_coco_panoptic"),
                             generator=SimpleNamespace(card="fcclip_convnext_l_coco_panoptic"))
    assert published_numbers(paired, "ade20k_150")["PQ"] == {
        "value": 27.3, "card": "maskclippp_eva02_l14_336_coco_panoptic", "generator": "fcclip_convnext_l",
        "same_generator": True}
    assert published_numbers(paired, "ade20k_847") == {}  # FC-CLIP-L's own A-847 number is not this pairing's
    assert set(pub) == {"mIoU", "PQ", "AP"}
    assert published_numbers(config, "pascal_context_59") == {}
    fcclip_l = SimpleNamespace(classifier=SimpleNamespace(card=None),
                               generator=SimpleNamespace(card="fcclip_convnext_l_coco_panoptic"))
    assert published_numbers(fcclip_l, "ade20k_847")["mIoU"]["value"] == 14.8
    assert published_numbers(fcclip_l, "pascal_voc_20")["mIoU"]["value"] == 95.4
    assert published_numbers(fcclip_l, "cityscapes_panoptic")["PQ"]["value"] == 44.0
    assert published_numbers(fcclip_l, "mapillary_vistas_panoptic")["PQ"]["value"] == 18.3
    wtext = SimpleNamespace(classifier=SimpleNamespace(card="maskclippp_eva02_l14_336_wtext_coco_stuff"),
                            generator=SimpleNamespace(card=None))
    assert published_numbers(wtext, "ade20k_150")["PQ"]["value"] == 27.7  # not the _maftp_l_pan variant


def test_torchrun_two_gloo_processes_equal_one_process(tmp_path):
    write_layout("ade20k_150_panoptic", tmp_path / "data", num_images=4)
    args = ["--config", "tiny", "--dataset", "ade20k_150_panoptic", "--root", str(tmp_path / "data"),
            "--device", "cpu", "--overlays", "0", *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    single = subprocess.run([sys.executable, "-m", "ovs_ros.eval_cli", *args, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                            "--nproc_per_node", "2", "-m", "ovs_ros.eval_cli", *args, "--out", str(tmp_path / "two")],
                           env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = _report(tmp_path / "one"), _report(tmp_path / "two")
    assert (one["world_size"], two["world_size"], two["evaluated"]) == (1, 2, 4)
    assert sorted(p.name for p in (tmp_path / "two/cache").glob("*.jsonl")) == ["stats-0.jsonl", "stats-1.jsonl"]
    assert json.dumps(one["metrics"]) == json.dumps(two["metrics"])
    assert json.dumps(one["per_class"]) == json.dumps(two["per_class"])
    # the shards really were different images
    shard = [json.loads(line)["image_id"] for line in (tmp_path / "two/cache/stats-1.jsonl").read_text().splitlines()]
    assert shard == ["img_0001", "img_0003"]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert _run(tmp_path, "ade20k_150", tmp_path / "out") == 1
    assert "not found" in capsys.readouterr().err
    write_layout("ade20k_150", tmp_path / "data", num_images=1)
    assert _run(tmp_path, "ade20k_150", tmp_path / "out", "--set", "vocabulary=[cat, dog]") == 1
    assert "--vocabulary" in capsys.readouterr().err
    assert _run(tmp_path, "ade20k_150", tmp_path / "out", "--limit", "0") == 1
    with pytest.raises(SystemExit):
        main(["--config", "tiny", "--dataset", "nope", "--root", str(tmp_path)])


def test_docs_list_every_dataset_and_the_cards_numbers():
    import re

    from ovs_ros.evaluation.datasets import DATASETS
    from ovs_ros.segmenter_config import load_segmenter_config

    docs = (REPO / "docs" / "evaluation.md").read_text()
    for name in DATASETS:
        assert f"| `{name}` |" in docs, name
    rows = re.findall(r"^\| `([a-z0-9_]+)`[^|]*\| [^|]+\| \(?([\d.]+)\)? \| \(?([\d.]+)\)? \| \(?([\d.]+)\)? \|", docs,
                      re.M)
    assert len(rows) >= 6
    for config_name, pq, miou, ap in rows:
        pub = published_numbers(load_segmenter_config(config_name), "ade20k_150_panoptic")
        assert (pub["PQ"]["value"], pub["mIoU"]["value"], pub["AP"]["value"]) == (float(pq), float(miou), float(ap))


def test_no_ap_skips_instances_and_the_cache_knows(tmp_path, oracle):
    write_layout("ade20k_150_panoptic", tmp_path / "data", num_images=2)
    fake = oracle(load_dataset("ade20k_150_panoptic", tmp_path / "data"))
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out", "--no-ap") == 0
    assert "AP" not in _report(tmp_path / "out")["metrics"] and fake.calls == [(True, False)] * 2
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out") == 1  # a cache without detections is refused
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out", "--fresh") == 0
    assert _report(tmp_path / "out")["metrics"]["AP"] == pytest.approx(100.0) and fake.calls[-1] == (True, True)
    (tmp_path / "data/ADEChallengeData2016/ade20k_instance_val.json").unlink()  # AP not measured, with a warning
    assert _run(tmp_path, "ade20k_150_panoptic", tmp_path / "out2") == 0
    assert "AP" not in _report(tmp_path / "out2")["metrics"] and "PQ" in _report(tmp_path / "out2")["metrics"]
