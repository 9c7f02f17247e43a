"""MaskCLIP++ semantic inference: `postprocess.semantic_inference` against a literal port of `_add_void_logits` +
`_semantic_inference` + the evaluator's argmax, and the Segmenter's optional output on the tiny random model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovs_ros.segmenter as segmenter_module
from ovs_ros.postprocess import semantic_inference


def ref_semantic(mask_cls_logits, seg_logits, mask_pred):
    """maskclippp.py: `_add_void_logits` (CLIP logits + generator void), `_semantic_inference`, then `argmax(0)`."""
    void_prob = F.softmax(seg_logits, dim=-1)[:, -1:]
    cls_prob = F.softmax(mask_cls_logits, dim=-1)
    rtn_prob = torch.cat([cls_prob * (1 - void_prob), void_prob], dim=-1)
    mask_cls = torch.log(rtn_prob + 1e-8)
    k = mask_cls_logits.shape[1]
    if mask_cls.size(1) == k + 1:
        mask_cls = F.softmax(mask_cls, dim=-1)[..., :-1]
    semseg = torch.einsum("qc,qhw->chw", mask_cls, mask_pred)
    return semseg.argmax(dim=0), rtn_prob


@pytest.mark.parametrize("chunk", [None, 7, 1000])
def test_semantic_inference_matches_maskclippp(chunk):
    gen = torch.Generator().manual_seed(0)
    q, k, h, w = 12, 9, 17, 23
    for _ in range(5):
        logits = torch.randn(q, k, generator=gen, dtype=torch.float64) * 3
        seg_logits = torch.randn(q, 5, generator=gen, dtype=torch.float64)
        masks = torch.rand(q, h, w, generator=gen, dtype=torch.float64)
        expected, class_probs = ref_semantic(logits, seg_logits, masks)
        got = semantic_inference(masks, class_probs, chunk_pixels=chunk)
        assert got.dtype == torch.long and got.shape == (h, w)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_semantic_inference_is_not_the_panoptic_argmax():
    """The soft sum lets several weak queries outvote one strong query: one query of class 0 (p 0.9, mask 0.9: the
    panoptic merge's winner, 0.81 vs 0.48) and two of class 1 (p 0.6, p0 0.1, masks 0.8) give class 1
    (1.005 vs 0.97)."""
    masks = torch.tensor([[[0.9]], [[0.8]], [[0.8]]])
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.6, 0.3], [0.1, 0.6, 0.3]])
    assert semantic_inference(masks, probs).item() == 1
    with pytest.raises(ValueError, match="queries"):
        semantic_inference(masks, probs[:2])


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("open_clip")
    from ovs_ros.segmenter import Segmenter

    return Segmenter.from_config("tiny", {"vocabulary": "ade20k_150"})


@pytest.mark.parametrize("hw", [(32, 48), (300, 520)])  # below and above the 256 x 384 generator frame
def test_segmenter_returns_semantic_inference_only_when_asked(tiny, hw, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    plain = tiny.segment(rgb)
    assert plain.semantic_inference is None and "semantic_inference" not in plain.timings_ms
    seen = {}

    def spy(masks, class_probs, chunk_pixels=None):
        seen["masks"], seen["probs"] = masks.clone(), class_probs.clone()
        return semantic_inference(masks, class_probs, chunk_pixels)

    monkeypatch.setattr(segmenter_module, "semantic_inference", spy)
    result = tiny.segment(rgb, semantic=True)
    np.testing.assert_array_equal(result.panoptic, plain.panoptic)  # the panoptic output is unchanged
    sem = result.semantic_inference
    assert sem.shape == hw and sem.dtype == np.int32 and 0 <= sem.min() and sem.max() < len(tiny.vocabulary)
    assert tuple(seen["masks"].shape[-2:]) == hw  # scored at the output size, as MaskCLIP++
    assert seen["probs"].shape[1] == len(tiny.vocabulary) + 1
    cls = torch.log(seen["probs"] + 1e-8).softmax(-1)[:, :-1]
    expected = torch.einsum("qc,qhw->chw", cls, seen["masks"]).argmax(0)
    np.testing.assert_array_equal(sem, expected.numpy())
    assert "semantic_inference" in result.timings_ms
