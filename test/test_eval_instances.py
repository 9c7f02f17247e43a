"""Instance predictions and mask AP: `postprocess.instance_inference` against a literal port of MaskCLIP++'s
`_instance_inference` (panoptic on), the Segmenter's optional output, and `coco_instance_ap` on hand-made cases."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovs_ros.segmenter as segmenter_module
from ovs_ros.postprocess import instance_inference

pytest.importorskip("pycocotools")
from ovs_ros.evaluation.instance_ap import coco_instance_ap, instances_to_coco_json  # noqa: E402


def ref_instance_inference(mask_cls, mask_pred, thing_ids, num_classes, test_topk_per_image=100):
    """maskclippp.py `_instance_inference` with panoptic_on (mask_cls: the void-augmented logits)."""
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes).unsqueeze(0).repeat(scores.size(0), 1).flatten(0, 1)
    test_topk_per_image = min(test_topk_per_image, scores.numel())
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(test_topk_per_image, sorted=False)
    labels_per_image = labels[topk_indices]
    topk_indices = torch.div(topk_indices, num_classes, rounding_mode='trunc')
    mask_pred = mask_pred[topk_indices]
    keep = torch.zeros_like(scores_per_image).bool()
    for i, lab in enumerate(labels_per_image):
        keep[i] = lab in thing_ids
    scores_per_image = scores_per_image[keep]
    labels_per_image = labels_per_image[keep]
    mask_pred = mask_pred[keep]
    pred_masks = (mask_pred > 0.5).float()
    mask_scores_per_image = ((mask_pred.flatten(1) * pred_masks.flatten(1)).sum(1)
                             / (pred_masks.flatten(1).sum(1) + 1e-6))
    return scores_per_image * mask_scores_per_image, labels_per_image, pred_masks.bool()


@pytest.mark.parametrize("topk", [100, 7])
def test_instance_inference_matches_maskclippp(topk):
    gen = torch.Generator().manual_seed(0)
    q, k, h, w = 20, 9, 13, 17
    is_thing = torch.tensor([True, False, True, True, False, True, False, True, True])
    thing_ids = {i: i for i in torch.nonzero(is_thing).squeeze(1).tolist()}.values()  # as the metadata dict
    for _ in range(4):
        probs = torch.rand(q, k + 1, generator=gen).softmax(-1)  # float32, as the Segmenter's
        masks = torch.rand(q, h, w, generator=gen)
        ref_scores, ref_labels, ref_masks = ref_instance_inference(torch.log(probs + 1e-8), masks, thing_ids, k, topk)
        scores, labels, binary = instance_inference(masks, probs, is_thing, topk=topk)
        order = torch.argsort(ref_scores, descending=True)
        mine = torch.argsort(scores, descending=True)
        torch.testing.assert_close(scores[mine], ref_scores[order], rtol=0, atol=0)
        assert torch.equal(labels[mine], ref_labels[order]) and torch.equal(binary[mine], ref_masks[order])
        assert all(is_thing[labels]) and len(labels) <= topk


def _gt_file(tmp_path, masks, category_ids, image_id="a"):
    from pycocotools import mask as mask_util

    anns = []
    for i, (mask, cat) in enumerate(zip(masks, category_ids), start=1):
        rle = mask_util.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": i, "image_id": image_id, "category_id": cat, "iscrowd": 0, "segmentation": rle,
                     "area": int(mask.sum()), "bbox": [float(v) for v in mask_util.toBbox(rle)]})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": image_id, "width": 20, "height": 20}], "annotations": anns,
                                "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}))
    return path


def test_mask_ap_on_hand_made_cases(tmp_path):
    a = np.zeros((20, 20), bool)
    a[0:10, 0:10] = True
    b = np.zeros((20, 20), bool)
    b[10:20, 10:20] = True
    gt = _gt_file(tmp_path, [a, b], [3, 3])
    b_shifted = np.zeros((20, 20), bool)
    b_shifted[12:20, 10:20] = True  # IoU 80 / 100 = 0.8
    b_far = np.zeros((20, 20), bool)
    b_far[14:20, 10:20] = True  # IoU 0.6
    perfect = instances_to_coco_json("a", [0.9, 0.8], [0, 0], np.stack([a, b]), [3])
    assert coco_instance_ap(gt, perfect, ["a"])["AP"] == pytest.approx(100.0)
    near = coco_instance_ap(gt, instances_to_coco_json("a", [0.9, 0.8], [0, 0], np.stack([a, b_far]), [3]), ["a"])
    # AP50 both match; AP75 only the first (recall 0.5 at precision 1): 51 of 101 recall points
    assert near["AP50"] == pytest.approx(100.0) and near["AP75"] == pytest.approx(100 * 51 / 101)
    mid = coco_instance_ap(gt, instances_to_coco_json("a", [0.9, 0.8], [0, 0], np.stack([a, b_shifted]), [3]), ["a"])
    assert near["AP"] < mid["AP"] < 100.0
    wrong_class = instances_to_coco_json("a", [0.9, 0.8], [1, 1], np.stack([a, b]), [3, 7])
    assert coco_instance_ap(gt, wrong_class, ["a"])["AP"] == 0.0
    assert np.isnan(coco_instance_ap(gt, [], ["a"])["AP"])


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("open_clip")
    from ovs_ros.segmenter import Segmenter

    return Segmenter.from_config("tiny", {"vocabulary": "ade20k_150", "text_cache_dir": None})


@pytest.mark.parametrize("hw", [(32, 48), (300, 520)])
def test_segmenter_returns_instances_only_when_asked(tiny, hw, monkeypatch):
    rgb = np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)
    plain = tiny.segment(rgb)
    assert plain.instances is None
    seen = {}

    def spy(masks, class_probs, is_thing, topk=100):
        seen["args"] = (masks.clone(), class_probs.clone(), is_thing.clone())
        return instance_inference(masks, class_probs, is_thing, topk)

    monkeypatch.setattr(segmenter_module, "instance_inference", spy)
    result = tiny.segment(rgb, instances=True)
    np.testing.assert_array_equal(result.panoptic, plain.panoptic)
    inst = result.instances
    masks, probs, is_thing = seen["args"]
    assert tuple(masks.shape[-2:]) == hw and inst.masks.shape[1:] == hw and len(inst.scores) <= 100
    expected = instance_inference(masks, probs, is_thing)
    np.testing.assert_array_equal(inst.classes, expected[1].numpy())
    np.testing.assert_array_equal(inst.masks, expected[2].numpy())
    assert tiny.vocabulary.is_thing[inst.classes].all() and inst.scores.dtype == np.float32
