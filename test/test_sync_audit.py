"""Host syncs between a frame's upload and its final copy (issue 11 item 4), counted on the CPU by ovs_ros.sync_audit.

The CPU count stands for CUDA's: the audit records the ops that would make the host wait there. Documented budget:
CPU 1 (the merge's `nonzero` compaction, chosen only on the CPU), CUDA 0 (tools/gpu_check.py measures it with
PyTorch's sync debug mode); the final copy is one packed `.cpu()` (+ its `.numpy()` view).
"""
import numpy as np
import pytest
import torch

import ovs_ros.postprocess as postprocess
from ovs_ros.postprocess import panoptic_merge
from ovs_ros.segmenter import Segmenter
from ovs_ros.sync_audit import audit_segment, audit_syncs

WINDOW_SYNCS_CPU = 1  # postprocess.panoptic_merge: keep.nonzero() (compact=None -> compact on the CPU)


def _astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.astronaut()[::2, ::2])


@pytest.fixture(scope="module")
def tiny():
    return Segmenter.from_config("tiny")


def test_tiny_frame_has_no_sync_but_the_documented_one(tiny):
    rgb = _astronaut()
    tiny.segment(rgb)  # warm-up: lazy set-up is not per frame
    report = audit_segment(tiny, rgb)
    sites = report.by_site()
    assert len(report.window) <= WINDOW_SYNCS_CPU, sites
    assert all(e.op == "nonzero" and "panoptic_merge" in e.site() for e in report.window), sites
    # the final copy is one packed tensor: one .cpu() (and its .numpy()), nothing per array
    assert sorted(e.op for e in report.final_copy) == ["cpu", "numpy"]


def test_audit_detects_an_injected_item(tiny, monkeypatch):
    """The audit is not blind: a `.item()` (and a boolean-mask index) slipped into the merge is counted there."""
    real = postprocess.ensemble_class_probs

    def leaky(*args, **kwargs):
        probs = real(*args, **kwargs)
        float(probs.max().item())
        _ = probs[probs > 0.5]
        return probs

    monkeypatch.setattr("ovs_ros.segmenter.ensemble_class_probs", leaky)
    report = audit_segment(tiny, _astronaut())
    ops = [e.op for e in report.window]
    assert "item" in ops and "index[bool mask]" in ops, ops
    assert len(report.window) >= WINDOW_SYNCS_CPU + 2
    assert any("leaky" in line for e in report.window for line in e.stack)


def test_audit_detects_host_copies_and_uploads():
    x = torch.arange(6.0)
    with audit_syncs() as report:
        x.tolist()
        x.cpu()
        x.numpy()
        torch.tensor([1.0, 2.0], device="cpu")
        torch.bincount(torch.tensor([0, 1, 1]))
        torch.unique(x)
        bool(x.sum() > 0)
        x.nonzero()
    ops = [e.op for e in report.events]
    for op in ("tolist", "cpu", "numpy", "tensor(host data, device=)", "bincount", "_unique2", "nonzero"):
        assert op in ops, (op, ops)
    assert "__bool__" in ops and ops.count("__bool__") + ops.count("_local_scalar_dense") == 1  # counted once
    with audit_syncs() as quiet:  # fixed-shape device work is not a sync
        (x * 2).softmax(0).cumsum(0).argmax()
        torch.where(x > 2, x, 0.0).index_select(0, torch.tensor([0, 2]))
    assert quiet.events == []


def test_sync_free_merge_has_no_sync_at_all():
    """What runs on CUDA (padded tables, all Q columns): not one sync from the scores to the segment tables."""
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 20, 24, generator=gen)
    probs = torch.rand(12, 6, generator=gen).softmax(-1)
    is_thing = torch.tensor([True, False, True, False, True])
    with audit_syncs() as report:
        merged = panoptic_merge(masks, probs, is_thing, padded=True, compact=False)
        panoptic, areas, boxes = postprocess.panoptic_at_size(merged, (40, 48))
        postprocess.semantic_map(panoptic, merged.segment_class, 5)
        postprocess.ensemble_class_probs(probs[:, :5], probs, torch.arange(6), is_thing, 0.9, 1.0)
    assert report.events == [], report.by_site()
    with audit_syncs() as compacting:
        panoptic_merge(masks, probs, is_thing, padded=True, compact=True)
    assert [e.op for e in compacting.events] == ["nonzero"]


@pytest.mark.parametrize("config", ["tiny", "fcclip_tiny_random", "maftp_tiny_random"])
def test_outputs_unchanged_on_a_photo(config, tiny):
    """The packed final copy and the padded merge give what the per-array copies and the exact merge gave."""
    from ovs_ros.postprocess import build_segments, panoptic_at_size, semantic_map

    segmenter = tiny if config == "tiny" else Segmenter.from_config(config)
    rgb = _astronaut()
    captured = {}
    real = postprocess.panoptic_merge

    def capture(mask_probs, class_probs, is_thing, **kwargs):
        captured.update(masks=mask_probs, probs=class_probs, is_thing=is_thing, kwargs=kwargs)
        return real(mask_probs, class_probs, is_thing, **kwargs)

    import ovs_ros.segmenter as segmenter_module

    segmenter_module.panoptic_merge = capture
    try:
        result = segmenter.segment(rgb)
    finally:
        segmenter_module.panoptic_merge = real
    kwargs = {k: v for k, v in captured["kwargs"].items() if k != "padded"}
    exact = real(captured["masks"], captured["probs"], captured["is_thing"], **kwargs)  # the former path
    panoptic, areas, boxes = panoptic_at_size(exact, rgb.shape[:2])
    labels = segmenter.vocabulary.labels
    np.testing.assert_array_equal(result.panoptic, panoptic.numpy())
    np.testing.assert_array_equal(result.semantic, semantic_map(panoptic, exact.segment_class, len(labels)).numpy())
    assert result.segments == build_segments(exact.segment_class, exact.segment_score, exact.segment_is_thing, areas,
                                             boxes, labels)
    assert config != "tiny" or len(result.segments) >= 1  # not a comparison of two empty tables


def test_text_embeddings_stay_on_the_device_across_a_vocabulary_switch(tiny, monkeypatch):
    """Frames reuse the vocabulary's resident embedding tensor (no per-frame upload or copy); a switch makes a new one
    on the Segmenter's device, and switching back reuses the cache."""
    import ovs_ros.segmenter as segmenter_module

    seen = []
    real = segmenter_module.mask_class_logits

    def recording(mask_embeddings, text_embeddings, *args, **kwargs):
        seen.append((text_embeddings.device, text_embeddings.data_ptr()))
        return real(mask_embeddings, text_embeddings, *args, **kwargs)

    monkeypatch.setattr(segmenter_module, "mask_class_logits", recording)
    rgb = _astronaut()[:96, :128]
    original = tiny.vocabulary
    tiny.segment(rgb)
    tiny.segment(rgb)
    tiny.set_vocabulary(["cat", "dog", "stuff:grass"])
    tiny.segment(rgb)
    try:
        with audit_syncs() as report:
            tiny.segment(rgb)
        assert [e.op for e in report.window if "tensor" in e.op or e.op == "cpu"] == []
    finally:
        tiny.set_vocabulary(original)
    assert all(device == tiny.device for device, _ in seen)
    assert seen[0][1] == seen[1][1], "the same vocabulary's embeddings were re-made for a frame"
    assert seen[2][1] != seen[0][1] and seen[3][1] == seen[2][1]
    assert tiny._current().embeddings.text_embeddings.device == tiny.device


def test_cuda_debug_mode_warnings_become_events(monkeypatch):
    """The CUDA detector without a GPU: the debug mode is switched on and restored, its warnings are recorded with
    the stack that caused them, other warnings still reach the user."""
    import warnings

    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def frame_to_host():  # a final-copy site by name (sync_audit.FINAL_COPY matches the file too: not this one)
        warnings.warn("called a synchronizing CUDA operation")

    with pytest.warns(UserWarning, match="unrelated"):
        with audit_syncs(torch.device("cuda"), modes=False) as report:
            warnings.warn("called a synchronizing CUDA operation")
            warnings.warn("unrelated")
            frame_to_host()
    assert modes == ["warn", 0]
    assert [e.op.split(":")[0] for e in report.events] == ["cuda_sync", "cuda_sync"]
    assert all(e.where == "window" for e in report.events)
    assert any("test_cuda_debug_mode_warnings_become_events" in line for line in report.events[0].stack)
