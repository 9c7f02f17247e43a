#!/usr/bin/env python3
"""The GPU check: one prepared run on a CUDA machine, nothing to download (random weights), a time budget.

    bash tools/gpu_check.sh [OUT_DIR]                 # what a session with a GPU runs (under 8 minutes)
    python tools/gpu_check.py --device cpu --configs tiny --cases eager:fp32 --iterations 2   # the CPU smoke test

For each config it runs eager fp32 as the reference, then each `backend:precision` case on the same VGA frame
(skimage's astronaut resized to 640x480): per-stage CUDA-event timings (median / p90 after warm-up), build time, peak
GPU memory, speed-up over eager fp32, parity with it (pixels with the same panoptic class, the same labels), and the
host syncs between the upload and the final copy (ovs_ros/sync_audit.py; expected 0 on CUDA, each site listed).
Then a 150-class vocabulary switch (ADE-150, t14) cold and warm. Results: `OUT_DIR/gpu_check.json` and
`OUT_DIR/gpu_check.md` (the table for BENCHMARKS.md). Cases that fail or would pass the budget are recorded as such.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_CASES = "eager:fp16,eager:bf16,compiled:fp32,compiled:fp16,tensorrt:fp16"
DEFAULT_CONFIGS = "tiny,eva02_b16_swin_tiny_random"


def environment() -> Dict[str, str]:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
           "cuda_available": str(torch.cuda.is_available())}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update({"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
                    "gpu_memory_gib": f"{props.total_memory / 2**30:.0f}", "bf16": str(torch.cuda.is_bf16_supported())})
    for name in ("triton", "tensorrt", "torch_tensorrt", "onnxruntime", "open_clip", "timm"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: say so
            env[name] = "absent"
    return env


def vga_frame():
    """skimage's astronaut at 640x480 (a synthetic frame where scikit-image is not installed)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    try:
        import skimage.data

        photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float()
    except ImportError:
        yy, xx = torch.meshgrid(torch.arange(480.0), torch.arange(640.0), indexing="ij")
        photo = torch.stack([xx / 640 * 255, yy / 480 * 255, (xx + yy) % 255])[None]
    frame = F.interpolate(photo, size=(480, 640), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(frame[0].permute(1, 2, 0).clamp(0, 255).round().byte().numpy())


def engine_shapes(segmenter, rgb) -> Dict[str, List[int]]:
    """The padded branch shapes eager runs for `rgb`: what the fixed-shape engines are built for."""
    height, width = rgb.shape[:2]
    gen = segmenter._generator_spec
    gen_hw = gen.padded_hw(gen.resized_hw(height, width))
    clip = segmenter._clip_spec
    clip_hw = clip.padded_hw(clip.resized_hw(*gen.resized_hw(height, width)))
    return {"generator.fixed_hw": list(gen_hw), "classifier.fixed_hw": list(clip_hw)}


def time_frames(segmenter, rgb, iterations: int, warmup: int) -> Dict[str, Dict[str, float]]:
    from ovs_ros.benchmark import benchmark_frames, p90

    per_stage = benchmark_frames(segmenter, rgb, iterations, warmup)
    return {k: {"median": statistics.median(v), "p90": p90(v)} for k, v in per_stage.items()}


def parity(reference, result) -> Dict[str, object]:
    return {"pixel_agreement": float((reference.semantic == result.semantic).mean()),
            "same_labels": sorted(s.label for s in reference.segments) == sorted(s.label for s in result.segments),
            "segments": len(result.segments)}


def run_case(config: str, overrides: dict, rgb, reference, iterations: int, warmup: int, device) -> Dict[str, object]:
    import torch

    from ovs_ros.segmenter import Segmenter

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    segmenter = Segmenter.from_config(config, overrides)
    built_s = time.perf_counter() - start
    result = segmenter.segment(rgb)
    out: Dict[str, object] = {"backend": segmenter.backend, "precision": str(segmenter.dtype).replace("torch.", ""),
                              "build_s": built_s, "timings_ms": time_frames(segmenter, rgb, iterations, warmup)}
    if reference is not None:
        out["parity"] = parity(reference, result)
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["host_syncs"] = host_syncs(segmenter, rgb, device)
    return out


def host_syncs(segmenter, rgb, device) -> Dict[str, object]:
    """Host syncs between the upload and the final copy of one warm frame (ovs_ros/sync_audit.py): on CUDA counted by
    torch.cuda.set_sync_debug_mode (`cuda_debug`), plus, for eager, the ops the CPU audit flags (`window`)."""
    from ovs_ros.sync_audit import audit_segment

    try:  # the dispatch modes stay away from compiled / TensorRT graphs: the debug mode alone there
        report = audit_segment(segmenter, rgb, modes=device.type != "cuda" or segmenter.backend == "eager")
    except Exception as exc:  # noqa: BLE001 - recorded
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"window": len(report.window),
            "cuda_debug": sum(e.op.startswith("cuda_sync") for e in report.window),
            "final_copy": len(report.final_copy), "sites": report.by_site()}


def vocabulary_switch(config: str, overrides: dict) -> Dict[str, float]:
    from ovs_ros.benchmark import benchmark_vocabulary_switch
    from ovs_ros.segmenter import Segmenter

    segmenter = Segmenter.from_config(config, overrides)
    return benchmark_vocabulary_switch(segmenter, "ade20k_150", "t14", repeats=5)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU check {report['date']} on {env.get('gpu', 'no GPU')} (torch {env['torch']}, CUDA {env['cuda']}, "
             f"TensorRT {env['tensorrt']}, torch-tensorrt {env['torch_tensorrt']}); VGA frame, random weights.", "",
             "| config | backend | precision | total ms (median / p90) | generator ms | classifier ms | vs eager fp32 "
             "| same class px | same labels | build s | peak MiB | host syncs (cuda debug / all) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for config, cases in report["results"].items():
        base = cases.get("eager:fp32", {}).get("timings_ms", {}).get("total", {}).get("median")
        for name, case in cases.items():
            if "error" in case or "skipped" in case:
                lines.append(f"| {config} | {name} | | {case.get('error') or case.get('skipped')} | | | | | | | | |")
                continue
            t = case["timings_ms"]
            par = case.get("parity", {})
            sync = case.get("host_syncs", {})
            syncs = sync.get("error") or f"{sync.get('cuda_debug', '?')} / {sync.get('window', '?')}"
            speed = f"{base / t['total']['median']:.2f}x" if base else ""
            lines.append(
                f"| {config} | {case['backend']} | {case['precision']} | {t['total']['median']:.2f} / "
                f"{t['total']['p90']:.2f} | {t.get('generator', {}).get('median', 0):.2f} | "
                f"{t.get('classifier', {}).get('median', 0):.2f} | {speed} | "
                f"{100 * par['pixel_agreement']:.2f} % | {par['same_labels']} | {case['build_s']:.1f} | "
                f"{case.get('peak_memory_mib', 0):.0f} | {syncs} |" if par else
                f"| {config} | {case['backend']} | {case['precision']} | {t['total']['median']:.2f} / "
                f"{t['total']['p90']:.2f} | {t.get('generator', {}).get('median', 0):.2f} | "
                f"{t.get('classifier', {}).get('median', 0):.2f} | 1.00x (reference) | | | {case['build_s']:.1f} | "
                f"{case.get('peak_memory_mib', 0):.0f} | {syncs} |")
    switch = report.get("vocabulary_switch")
    if switch and "error" in switch:
        lines += ["", f"Vocabulary switch: {switch['error']}"]
    elif switch:
        lines += ["", f"Vocabulary switch to ADE-150 ({switch.get('classes')} classes, t14): cold "
                  f"{switch.get('cold_ms', 0):.0f} ms, warm from memory {switch.get('warm_memory_ms', 0):.3f} ms, "
                  f"Segmenter.set_vocabulary warm {switch.get('segmenter_swap_warm_ms', 0):.3f} ms."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="backend:precision,... besides eager:fp32")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=420.0, help="no new case starts after this many seconds")
    parser.add_argument("--no-switch", action="store_true", help="skip the vocabulary switch")
    args = parser.parse_args(argv)

    import torch

    started = time.monotonic()
    device = torch.device(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d"), "environment": environment(), "results": {}}
    print(json.dumps(report["environment"], indent=1))
    rgb = vga_frame()
    for config in [c for c in args.configs.split(",") if c]:
        from ovs_ros.segmenter import Segmenter

        base = {"device": args.device, "text_cache_dir": None}
        cases: Dict[str, object] = {}
        report["results"][config] = cases
        try:
            eager = Segmenter.from_config(config, base)
            reference = eager.segment(rgb)
            fixed = engine_shapes(eager, rgb)
            del eager
            cases["eager:fp32"] = run_case(config, base, rgb, None, args.iterations, args.warmup, device)
        except Exception as exc:  # noqa: BLE001 - recorded, the other configs still run
            cases["eager:fp32"] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
            continue
        for name in [c for c in args.cases.split(",") if c and c != "eager:fp32"]:
            if time.monotonic() - started > args.budget_s:
                cases[name] = {"skipped": "time budget"}
                continue
            backend, precision = name.split(":")
            overrides = {**base, **fixed, "backend": backend, "precision": precision, "precision_fallback": False}
            try:
                cases[name] = run_case(config, overrides, rgb, reference, args.iterations, args.warmup, device)
            except Exception as exc:  # noqa: BLE001
                cases[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                traceback.print_exc()
            print(f"{config} {name}: {json.dumps(cases[name])[:400]}", flush=True)
    if not args.no_switch and time.monotonic() - started <= args.budget_s:
        config = args.configs.split(",")[-1]
        try:
            report["vocabulary_switch"] = vocabulary_switch(config, {"device": args.device, "text_cache_dir": None})
        except Exception as exc:  # noqa: BLE001
            report["vocabulary_switch"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["elapsed_s"] = time.monotonic() - started
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out_dir / "gpu_check.md").write_text(table)
    print(table)
    print(f"done in {report['elapsed_s']:.0f} s: {out_dir}/gpu_check.json, {out_dir}/gpu_check.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
