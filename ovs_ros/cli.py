"""Command-line tools without ROS: `ovs-segment` (one image), `ovs-demo` (a real photo, offline) and `ovs-export`
(ONNX engines for trtexec / onnxruntime)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np

LOG = logging.getLogger("ovs_ros")

SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "grace_hopper")


def parse_vocab_argument(text: str) -> List[str]:
    """`"person,dog,grass"` -> three classes; with `;`, each item is one class with synonyms: `"person,man;dog"`."""
    if ";" in text:
        items = [item.strip() for item in text.split(";")]
    else:
        items = [item.strip() for item in text.split(",")]
    return [item for item in items if item]


def load_image(path_or_name: str) -> np.ndarray:
    """An image file (any OpenCV format) or the name of a bundled sample photo, as HxWx3 uint8 RGB."""
    if path_or_name in SAMPLE_IMAGES:
        return sample_image(path_or_name)
    bgr = cv2.imread(str(path_or_name), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path_or_name} (missing or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def sample_image(name: str) -> np.ndarray:
    """Real photos that ship with scikit-image / matplotlib, for offline demos and tests."""
    if name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    try:
        import skimage.data
    except ImportError as exc:
        raise SystemExit(f"sample image {name!r} needs scikit-image: pip install scikit-image") from exc
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def add_config_overrides(parser: argparse.ArgumentParser) -> None:
    """`--precision` and `--set key=value` (shared by every CLI that builds a Segmenter)."""
    parser.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                        help="override the config's precision (half precision on a CPU runs fp32 unless "
                             "--set precision_fallback=false)")
    parser.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config setting, dotted keys, YAML values; repeatable "
                             "(e.g. --set generator.input_short_side=800 --set ensemble_alpha=0.9)")


def config_overrides(args: argparse.Namespace) -> dict:
    """The overrides `--set` and `--precision` ask for (`--precision` wins over a `--set precision=`)."""
    from ovs_ros.segmenter_config import parse_set_overrides

    overrides = parse_set_overrides(getattr(args, "set_items", None))
    if getattr(args, "precision", None):
        overrides["precision"] = args.precision
    return overrides


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="segmenter config: a YAML path or a name in config/segmenter/")
    parser.add_argument("--device", default=None, help="override the config's device (cpu, cuda, auto)")
    add_config_overrides(parser)
    parser.add_argument("--vocab", default=None, help='classes, e.g. "person,dog,grass" or "person,man;dog"')
    parser.add_argument("--vocab-file", default=None, help="vocabulary YAML (or a name in config/vocabularies/)")
    parser.add_argument("--templates", default=None, choices=["t1", "t14", "t80"])
    parser.add_argument("-v", "--verbose", action="store_true")


def _build_segmenter(args: argparse.Namespace):
    from ovs_ros.segmenter import Segmenter

    overrides = config_overrides(args)
    if args.device:
        overrides["device"] = args.device
    if args.vocab_file:
        overrides["vocabulary"] = args.vocab_file
    elif args.vocab:
        overrides["vocabulary"] = parse_vocab_argument(args.vocab)
    if args.templates:
        overrides["template_set"] = args.templates
    segmenter = Segmenter.from_config(args.config, overrides)
    if not segmenter.uses_pretrained_weights:
        LOG.warning(
            "RANDOM WEIGHTS: config %r uses no pretrained weights (tiny demo model or weights not given); masks and "
            "labels are meaningless. See README 'Real weights' to load the published models.",
            args.config,
        )
    return segmenter


def _write_outputs(rgb: np.ndarray, result, out_png: Optional[Path], out_json: Optional[Path]) -> None:
    from ovs_ros.overlay import render_overlay

    if out_png is not None:
        out_png.parent.mkdir(parents=True, exist_ok=True)
        overlay = render_overlay(rgb, result)
        if not cv2.imwrite(str(out_png), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {out_png}")
        LOG.info("overlay written to %s", out_png)
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "image_hw": list(rgb.shape[:2]),
            "vocabulary_version": result.vocabulary_version,
            "segments": result.segments_table(),
            "timings_ms": result.timings_ms,
        }
        out_json.write_text(json.dumps(payload, indent=2))
        LOG.info("segments written to %s", out_json)


def _summary(result) -> str:
    timings = ", ".join(f"{k} {v:.1f}" for k, v in result.timings_ms.items())
    labels = sorted({s.label for s in result.segments})
    shown = ", ".join(labels[:12]) + ("..." if len(labels) > 12 else "")
    return f"{len(result.segments)} segments ({shown}); ms: {timings}"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="[%(levelname)s] %(name)s: %(message)s")


def _run(args: argparse.Namespace, image: str, warmup: bool):
    """Load, build, segment; `None` (error logged) on a missing file or bad input instead of a traceback."""
    try:
        rgb = load_image(image)
        segmenter = _build_segmenter(args)
        if warmup:  # first-call allocations are not the model's speed
            segmenter.segment(rgb)
        return rgb, segmenter, segmenter.segment(rgb)
    except (FileNotFoundError, ValueError) as exc:
        LOG.error("%s", exc)
        return None


def main(argv: Optional[List[str]] = None) -> int:
    """`ovs-segment IMAGE --vocab "person,dog,grass" --out overlay.png --json segments.json`"""
    parser = argparse.ArgumentParser(prog="ovs-segment", description=__doc__)
    parser.add_argument("image", help=f"image file, or a sample photo: {', '.join(SAMPLE_IMAGES)}")
    parser.add_argument("--out", type=Path, default=Path("overlay.png"), help="overlay PNG to write")
    parser.add_argument("--json", type=Path, default=None, help="segment table JSON to write")
    _add_common(parser)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    outcome = _run(args, args.image, warmup=False)
    if outcome is None:
        return 2
    rgb, _, result = outcome
    _write_outputs(rgb, result, args.out, args.json)
    print(_summary(result))
    return 0


def demo_main(argv: Optional[List[str]] = None) -> int:
    """`ovs-demo`: segment a real photo offline and write overlay.png + segments.json."""
    parser = argparse.ArgumentParser(prog="ovs-demo", description=demo_main.__doc__)
    parser.add_argument("--image", default="astronaut", help=f"a sample photo ({', '.join(SAMPLE_IMAGES)}) or a file")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    _add_common(parser)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    outcome = _run(args, args.image, warmup=True)
    if outcome is None:
        return 2
    rgb, segmenter, result = outcome
    _write_outputs(rgb, result, args.out / "overlay.png", args.out / "segments.json")
    print(f"ovs-demo on {args.image} ({rgb.shape[1]}x{rgb.shape[0]}), config {args.config}: {_summary(result)}")
    if not segmenter.uses_pretrained_weights:
        print("NOTE: random weights (no pretrained CLIP / Mask2Former on this machine): the overlay shows the "
              "pipeline working, not real labels.")
    return 0


def export_main(argv: Optional[List[str]] = None) -> int:
    """`ovs-export --config tiny --out-dir engines/ [--precision fp16]`: write generator.onnx, classifier.onnx and
    engines.json (fp16: fp16 graphs with the deformable pixel decoder as an fp32 island, for TensorRT 11)."""
    parser = argparse.ArgumentParser(prog="ovs-export", description=export_main.__doc__)
    parser.add_argument("--config", default="tiny", help="segmenter config: a YAML path or a name in config/segmenter/")
    parser.add_argument("--out-dir", type=Path, default=Path("engines"), help="output folder")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--generator-hw", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="generator input size; default the config's generator.fixed_hw")
    parser.add_argument("--classifier-hw", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="CLIP input size; default the config's classifier.fixed_hw")
    parser.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo", "auto"])
    add_config_overrides(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from ovs_ros.engines import EXPORT_PRECISIONS, export_engines
    from ovs_ros.segmenter_config import load_segmenter_config

    try:
        overrides = config_overrides(args)
        # fp32 unless asked (`--precision` or `--set precision=`), whatever the config says: the config's precision
        # is for its runtime, and fp32 graphs feed both trtexec lines (TensorRT 10 with --fp16 too).
        precision = overrides.pop("precision", "fp32")
        if precision not in EXPORT_PRECISIONS:
            raise ValueError(f"ovs-export writes fp32 or fp16 ONNX graphs; --precision {precision} is not supported")
        config = load_segmenter_config(args.config, overrides)
        sidecar = export_engines(config, args.out_dir, opset=args.opset, generator_hw=args.generator_hw,
                                 classifier_hw=args.classifier_hw, exporter=args.exporter, precision=precision)
    except (FileNotFoundError, ValueError) as exc:
        LOG.error("%s", exc)
        return 2
    info = json.loads(sidecar.read_text())
    for kind in ("generator", "classifier"):
        if info[kind] is None:  # FC-CLIP alone: the classifier role is part of the generator engine
            continue
        shapes = ", ".join(f"{i['name']} {i['shape']}" for i in info[kind]["inputs"])
        print(f"{args.out_dir / info[kind]['file']}: {shapes} ({info['precision']})")
    print(f"{sidecar}: names, shapes, dtypes, normalisation, resolved config")
    return 0


if __name__ == "__main__":
    sys.exit(main())
