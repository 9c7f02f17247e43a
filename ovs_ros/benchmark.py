"""`ovs-benchmark`: where every millisecond of a frame goes, and what a vocabulary switch costs.

Measures; asserts nothing. Run it on the machine you care about and paste its output into BENCHMARKS.md with the
command line that produced it. Stage times on CUDA come from CUDA events (stage_timer.py), read after each frame;
`--backends eager,compiled,tensorrt` runs each backend on the same frame in one process and prints their ratios to
the first, with peak GPU memory; `--json` writes every number.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

MODEL_STAGES = ("generator", "mask_resample", "classifier", "similarity")
POST_STAGES = ("ensemble", "merge")


def _stats(values: List[float]) -> str:
    return f"{statistics.median(values):9.2f} {p90(values):9.2f} {min(values):9.2f} {max(values):9.2f}"


def p90(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def peak_memory_mb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def benchmark_frames(segmenter, rgb, iterations: int, warmup: int) -> Dict[str, List[float]]:
    from tqdm import tqdm

    for _ in range(warmup):
        segmenter.segment(rgb)
    per_stage: Dict[str, List[float]] = {}
    for _ in tqdm(range(iterations), desc="frames", leave=False):
        result = segmenter.segment(rgb)
        for stage, ms in result.timings_ms.items():
            per_stage.setdefault(stage, []).append(ms)
    return per_stage


def benchmark_vocabulary_switch(segmenter, vocabulary: str, template_set: str, repeats: int = 20) -> Dict[str, float]:
    """Cold (every phrase new), warm from memory, warm from disk, for `vocabulary` with `template_set`."""
    from ovs_ros.text_cache import TextEmbeddingCache
    from ovs_ros.segmenter import _as_vocabulary

    vocab = _as_vocabulary(vocabulary, segmenter.config.max_vocabulary_classes)
    fingerprint = segmenter.text_cache.fingerprint  # the tower that encodes (FC-CLIP's own for fcclip_b)
    with tempfile.TemporaryDirectory() as cache_dir:
        cold_cache = TextEmbeddingCache(
            segmenter._encode_sentences, fingerprint, cache_dir=Path(cache_dir), device=segmenter.device,
            show_progress=True,
        )
        start = time.perf_counter()
        cold_cache.embed(vocab, template_set)
        cold_ms = (time.perf_counter() - start) * 1000.0
        memory_ms = []
        for _ in range(repeats):
            start = time.perf_counter()
            cold_cache.embed(vocab, template_set)
            memory_ms.append((time.perf_counter() - start) * 1000.0)
        # A vocabulary never assembled before whose phrases are all cached: the same classes, rotated (a new
        # order each time, so no assembled result can be reused).
        from ovs_ros.vocabulary import Vocabulary

        reordered_ms = []
        entries = list(vocab.entries)
        for i in range(1, repeats + 1):
            reordered = Vocabulary(entries[i:] + entries[:i])
            start = time.perf_counter()
            cold_cache.embed(reordered, template_set)
            reordered_ms.append((time.perf_counter() - start) * 1000.0)
        disk_cache = TextEmbeddingCache(
            segmenter._encode_sentences, fingerprint, cache_dir=Path(cache_dir), device=segmenter.device
        )
        start = time.perf_counter()
        disk_cache.embed(vocab, template_set)
        disk_ms = (time.perf_counter() - start) * 1000.0
        encoded_from_disk = disk_cache.stats.get("sentences_encoded", 0)
    # The full Segmenter swap (embeddings from memory + seen flags + LUT + one reference swap).
    segmenter.set_vocabulary(vocab, template_set)
    swap_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.set_vocabulary(vocab, template_set)
        swap_ms.append((time.perf_counter() - start) * 1000.0)
    return {
        "classes": len(vocab),
        "sentences": len(vocab.phrases) * _num_templates(template_set),
        "cold_ms": cold_ms,
        "warm_memory_ms": statistics.median(memory_ms),
        "warm_memory_new_order_ms": statistics.median(reordered_ms),
        "warm_disk_ms": disk_ms,
        "warm_disk_sentences_encoded": encoded_from_disk,
        "segmenter_swap_warm_ms": statistics.median(swap_ms),
    }


def benchmark_postprocess(num_queries: int, num_classes: int, size: int, repeats: int = 8) -> Dict[str, float]:
    """Ensemble + merge + id-map sizing + semantic map + boxes, as `Segmenter.segment` runs them, on masks that
    split a `size` x `size` frame into many segments (random weights give a few large ones, which flatters the
    merge)."""
    import torch.nn.functional as F

    from ovs_ros.postprocess import (ensemble_class_probs, masks_for_merge, panoptic_at_size, panoptic_merge,
                                     semantic_map)

    generator = torch.Generator().manual_seed(0)
    field = F.interpolate(torch.randn(1, num_queries, 12, 12, generator=generator), size=(size, size),
                          mode="bilinear")[0]
    owner = F.one_hot(field.argmax(0), num_queries).permute(2, 0, 1).float()
    mask_probs = owner * 0.9 + 0.05 + 0.02 * torch.rand(num_queries, size, size, generator=generator)
    clip_logits = torch.randn(num_queries, num_classes, generator=generator) * 5
    train_classes = 133
    gen_logits = torch.randn(num_queries, train_classes + 1, generator=generator)
    lut = torch.randint(0, num_classes + 1, (train_classes + 1,), generator=generator)
    lut[-1] = num_classes
    seen = torch.rand(num_classes, generator=generator) < 0.5
    is_thing = torch.rand(num_classes, generator=generator) < 0.6
    times, segments = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        probs = ensemble_class_probs(clip_logits, gen_logits, lut, seen, 0.9, 1.0)
        merged = panoptic_merge(masks_for_merge(mask_probs[None], (size, size))[0], probs, is_thing)
        panoptic, _, _ = panoptic_at_size(merged, (size, size))
        semantic_map(panoptic, merged.segment_class, num_classes)
        times.append((time.perf_counter() - start) * 1000.0)
        segments = merged.num_segments
    return {"median_ms": statistics.median(times[1:]), "segments": segments}


def _num_templates(template_set: str) -> int:
    from ovs_ros.templates import TEMPLATES

    return len(TEMPLATES[template_set])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ovs-benchmark", description=__doc__)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--image", default="astronaut")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--switch-vocabulary", default="ade20k_150",
                        help="vocabulary for the switch benchmark ('' = skip)")
    parser.add_argument("--switch-templates", default="t14")
    parser.add_argument("--postprocess-size", type=int, default=640,
                        help="frame side for the many-segments post-processing measurement (0 = skip)")
    parser.add_argument("--backends", default="",
                        help="comma-separated backends to compare on the same frame (e.g. eager,compiled,tensorrt); "
                        "empty = the config's")
    parser.add_argument("--json", default=None, help="write every number to this JSON file")
    parser.add_argument("--random-weights", action="store_true",
                        help="keep the config's and its cards' settings (sizes, thresholds, ensemble, templates) but "
                        "build random weights: times a released pipeline without its files")
    from ovs_ros.cli import add_config_overrides, config_overrides

    add_config_overrides(parser)
    args = parser.parse_args(argv)

    from ovs_ros.cli import load_image
    from ovs_ros.segmenter import Segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = config_overrides(args)
    if args.device:
        overrides["device"] = args.device
    overrides.setdefault("text_cache_dir", None)
    rgb = load_image(args.image)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] or [overrides.get("backend")]
    report: Dict[str, object] = {"config": args.config, "image": list(rgb.shape[:2]), "torch": torch.__version__,
                                 "backends": {}}
    segmenter = None
    for backend in backends:
        run_overrides = dict(overrides) if backend is None else {**overrides, "backend": backend}
        if args.random_weights:
            from ovs_ros.segmenter_config import load_segmenter_config, with_random_weights

            segmenter = Segmenter.from_config(with_random_weights(load_segmenter_config(args.config, run_overrides)))
        else:
            segmenter = Segmenter.from_config(args.config, run_overrides)
        gen_cfg, cls_cfg = segmenter.config.generator, segmenter.config.classifier
        if segmenter.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(segmenter.device)
        print(f"config {args.config} | backend {segmenter.backend} | device {segmenter.device} | precision "
              f"{segmenter.describe()['precision']} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
              f"image {rgb.shape[1]}x{rgb.shape[0]} | vocabulary {len(segmenter.vocabulary)} classes "
              f"({segmenter.template_set}) | generator {gen_cfg.input_short_side}/{gen_cfg.max_long_side} | classifier "
              f"{cls_cfg.input_short_side}{' | random weights' if args.random_weights else ''}")
        per_stage = benchmark_frames(segmenter, rgb, args.iterations, args.warmup)
        print(f"\n{'stage':<16}{'median ms':>10}{'p90':>10}{'min':>10}{'max':>10}")
        for stage, values in per_stage.items():
            print(f"{stage:<16} {_stats(values)}")
        model_ms = sum(statistics.median(per_stage[s]) for s in MODEL_STAGES if s in per_stage)
        post_ms = sum(statistics.median(per_stage[s]) for s in POST_STAGES if s in per_stage)
        total = statistics.median(per_stage["total"])
        peak = peak_memory_mb(segmenter.device)
        print(f"\nmodel time (generator+resample+classifier+similarity) {model_ms:.2f} ms; post-processing "
              f"(ensemble+merge+semantic) {post_ms:.2f} ms = {100.0 * post_ms / max(model_ms, 1e-9):.2f} % of model "
              "time")
        print(f"frame total median {total:.1f} ms ({1000.0 / total:.2f} fps), p90 {p90(per_stage['total']):.1f} ms"
              + ("" if peak is None else f", peak GPU memory {peak:.0f} MiB") + "\n")
        report["backends"][segmenter.backend] = {
            "stages": {k: {"median": statistics.median(v), "p90": p90(v)} for k, v in per_stage.items()},
            "model_ms": model_ms, "post_ms": post_ms, "peak_memory_mb": peak}
    if len(report["backends"]) > 1:
        first, *_ = report["backends"]
        base = report["backends"][first]["stages"]["total"]["median"]
        print(f"{'backend':<12}{'total ms':>10}{'p90':>10}{'speed-up vs ' + first:>20}")
        for name, numbers in report["backends"].items():
            total = numbers["stages"]["total"]
            print(f"{name:<12}{total['median']:10.2f}{total['p90']:10.2f}{base / total['median']:19.2f}x")
    model_ms = report["backends"][segmenter.backend]["model_ms"]
    if args.postprocess_size:
        post = benchmark_postprocess(100, 150, args.postprocess_size)
        print(f"post-processing with many segments (Q=100, K=150, {args.postprocess_size}x{args.postprocess_size}, "
              f"{post['segments']} segments): {post['median_ms']:.2f} ms = "
              f"{100.0 * post['median_ms'] / max(model_ms, 1e-9):.2f} % of this config's model time")
    if args.switch_vocabulary:
        switch = benchmark_vocabulary_switch(segmenter, args.switch_vocabulary, args.switch_templates)
        print(f"\nvocabulary switch to {args.switch_vocabulary} ({switch['classes']} classes, "
              f"{switch['sentences']} sentences, {args.switch_templates}):")
        print(f"  cold (all phrases new)        {switch['cold_ms']:10.1f} ms")
        print(f"  warm from memory (same vocab) {switch['warm_memory_ms']:10.3f} ms")
        print(f"  warm from memory (new order)  {switch['warm_memory_new_order_ms']:10.3f} ms")
        print(f"  warm from disk (new process)  {switch['warm_disk_ms']:10.1f} ms "
              f"({switch['warm_disk_sentences_encoded']} sentences re-encoded)")
        print(f"  Segmenter.set_vocabulary warm {switch['segmenter_swap_warm_ms']:10.3f} ms")
        report["vocabulary_switch"] = switch
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
