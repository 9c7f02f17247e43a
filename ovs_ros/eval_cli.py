"""`ovs-eval`: reproduce the published PQ / mIoU of a Segmenter config on a standard evaluation split.

    ovs-eval --config NAME --dataset ade20k_150_panoptic --root DATASETS [--limit N] [--device cuda] [--out DIR]
    torchrun --nproc_per_node 4 -m ovs_ros.eval_cli --config NAME --dataset ade20k_847 --root DATASETS --out DIR

Per image: the Segmenter's panoptic output against the panoptic GT (panopticapi PQ) and MaskCLIP++'s soft semantic
inference against the semantic GT (MaskCLIP++ SemSegEvaluator), both from `ovs_ros.evaluation`. Each image's
statistics are appended to a cache in `--out` as soon as they exist, so a killed run resumes where it stopped; an
image that fails is counted and listed, never fatal, and is retried by the next run. Under `torchrun` each rank takes
a shard (`samples[rank::world]`); the per-image statistics are gathered and added in dataset order, so the result is
identical to one process. Writes `metrics.json`, `metrics.md` (every metric beside the model card's published number)
and a few overlay images.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

LOG = logging.getLogger("ovs_ros.eval")

# dataset -> prefix of its numbers in a model card's `published:` map (models/*.yaml, e.g. ade150_miou)
PUBLISHED_PREFIX = {
    "ade20k_150_panoptic": "ade150",
    "ade20k_150": "ade150",
    "ade20k_847": "a847",
    "coco_panoptic": "coco",
    "coco_stuff_171": "cocostuff",
    "cityscapes_panoptic": "cityscapes",
    "mapillary_vistas_panoptic": "mapillary",
    "pascal_context_59": "pc59",
    "pascal_context_459": "pc459",
    "pascal_voc_20": "pas20",
    "pascal_voc_21": "pas21",
}
# card key suffix -> metric name (models/README.md: `published:` keys are `<benchmark>_<metric>`)
CARD_METRICS = {"miou": "mIoU", "pq": "PQ", "sq": "SQ", "rq": "RQ", "ap": "AP"}
PANOPTIC_METRICS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
SEMANTIC_METRICS = ("mIoU", "fwIoU", "mACC", "pACC", "mIoU(S)", "mIoU(U)")
CACHE_DIR = "cache"
RUN_FILE = "run.json"


class EvalError(RuntimeError):
    """A fatal, user-facing problem (bad arguments, a cache from another run); printed as one line."""


# ---------------------------------------------------------------------------------------------------- distributed
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: Optional[str] = None
    owned: bool = True  # False: the caller's process group (a training run's final eval), left open at the end

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.on:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj):
        """Every rank's `obj`, in rank order (a list of one without torchrun)."""
        if not self.on:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.on and self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def init_distributed(device: Optional[str]) -> Dist:
    """torchrun's environment -> a process group (nccl on CUDA, gloo on the CPU) and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():  # called in process by a torchrun job that already joined (ovs_training final_eval)
        return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owned=False)
    wants_cuda = (device or "auto").startswith("cuda") or ((device or "auto") == "auto" and torch.cuda.is_available())
    if wants_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if wants_cuda else "gloo")
    return Dist(rank=rank, world=world, device=device)


# ---------------------------------------------------------------------------------------------------- per image
def evaluate_sample(segmenter, dataset, sample, instance_image_id=None) -> dict:
    """One image's statistics record (JSON-safe) and the result (for overlays). With `instance_image_id` (the id in
    the instance annotations) the record also keeps the image's detections as COCO results, for mask AP."""
    from ovs_ros.evaluation import PanopticSegment, pq_image_stats, semseg_image_stats

    rgb = sample.load_image()
    start = time.perf_counter()
    result = segmenter.segment(rgb, semantic=dataset.has_semantic, instances=instance_image_id is not None)
    seconds = time.perf_counter() - start
    record: dict = {"image_id": sample.image_id, "seconds": seconds}
    k = dataset.num_classes
    if dataset.has_semantic:
        gt = sample.load_semantic()
        if gt.shape != result.semantic_inference.shape:
            raise ValueError(f"semantic GT {gt.shape} and image {rgb.shape[:2]} differ in size")
        record["semseg"] = semseg_image_stats(result.semantic_inference, gt, k, dataset.ignore_label).to_dict()
    if dataset.has_panoptic:
        gt_ids = sample.load_panoptic()
        if gt_ids.shape != result.panoptic.shape:
            raise ValueError(f"panoptic GT {gt_ids.shape} and image {rgb.shape[:2]} differ in size")
        pred_segments = [PanopticSegment(s.id, s.class_index) for s in result.segments]
        record["pq"] = pq_image_stats(gt_ids, sample.segments, result.panoptic, pred_segments, k).to_dict()
    if instance_image_id is not None:
        from ovs_ros.evaluation.instance_ap import instances_to_coco_json

        inst = result.instances
        record["instances"] = instances_to_coco_json(instance_image_id, inst.scores, inst.classes, inst.masks,
                                                     [entry.dataset_id for entry in dataset.vocabulary])
    return record, rgb, result


# ---------------------------------------------------------------------------------------------------- cache
def run_fingerprint(args: argparse.Namespace, config, dataset) -> dict:
    """What makes two runs' per-image statistics interchangeable; a resume with another one is refused."""
    settings = dataclasses.asdict(config)
    for key in ("device", "num_threads", "text_cache_dir", "weights_dir", "engine_cache_dir"):
        settings.pop(key, None)
    vocab = json.dumps([list(names) for names in dataset.vocabulary.names])
    return {
        "dataset": dataset.name,
        "root": str(Path(args.root).expanduser().resolve()),
        "vocabulary_sha1": hashlib.sha1(vocab.encode()).hexdigest(),
        "config": settings,
        "device_type": (args.device or config.device or "auto").split(":")[0],
    }


def read_cache(out: Path) -> Tuple[Dict[str, dict], int]:
    """image id -> record from every rank's cache file; also the number of unreadable lines (a run killed mid-write
    leaves at most one per file; that image is simply evaluated again)."""
    records: Dict[str, dict] = {}
    broken = 0
    for path in sorted((out / CACHE_DIR).glob("stats-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[record["image_id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                broken += 1
    return records, broken


def prepare_out(out: Path, fingerprint: dict, fresh: bool, ctx: Dist) -> None:
    run_file = out / RUN_FILE
    if run_file.is_file() and not fresh:
        previous = json.loads(run_file.read_text())
        if previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            raise EvalError(f"{out} holds a cache from another run (differs in: {', '.join(changed)}); use another "
                            "--out or --fresh to discard it")
    ctx.barrier()
    if ctx.rank == 0:
        (out / CACHE_DIR).mkdir(parents=True, exist_ok=True)
        if fresh:
            for path in (out / CACHE_DIR).glob("stats-*.jsonl"):
                path.unlink()
        run_file.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
    ctx.barrier()


# ---------------------------------------------------------------------------------------------------- summary
def summarise(dataset, samples: Sequence, records: Dict[str, dict], seen: Optional[np.ndarray]) -> dict:
    """Add the per-image statistics in dataset order (bit-identical however they were computed) and average."""
    from ovs_ros.evaluation import PQStats, SemSegStats, pq_summary, semseg_summary

    k = dataset.num_classes
    labels = list(dataset.vocabulary.labels)
    names = [f"{i}:{label}" for i, label in enumerate(labels)]  # benchmark tables may repeat a label
    metrics: dict = {}
    per_class: dict = {}
    if dataset.has_panoptic:
        total = PQStats(k)
        for sample in samples:
            if sample.image_id in records:
                total += PQStats.from_dict(records[sample.image_id]["pq"])
        pq = pq_summary(total, dataset.is_thing, names)
        metrics.update({key: pq[key] for key in PANOPTIC_METRICS})
        per_class["panoptic"] = pq["per_class"]
    if dataset.has_semantic:
        total_sem = SemSegStats(k)
        for sample in samples:
            if sample.image_id in records:
                total_sem += SemSegStats.from_dict(records[sample.image_id]["semseg"])
        sem = semseg_summary(total_sem, seen, names)
        metrics.update({key: sem[key] for key in SEMANTIC_METRICS if key in sem})
        per_class["semantic"] = sem["per_class"]
    return {"metrics": metrics, "per_class": per_class}


def instance_image_ids(dataset, disabled: bool) -> Optional[Dict[str, object]]:
    """sample id -> image id in the instance annotations (COCO ids are ints, ADE ids strings), or None when mask AP
    is not measured (no annotations, or `--no-ap`). An evaluated image missing from them is an error."""
    if disabled or not dataset.has_instances:
        return None
    try:
        import pycocotools  # noqa: F401
    except ImportError as exc:
        raise EvalError("mask AP needs pycocotools: pip install 'ovs_ros[eval]' (or pass --no-ap)") from exc
    with open(dataset.instances_json) as f:
        ids = {str(img["id"]): img["id"] for img in json.load(f)["images"]}
    missing = [s.image_id for s in dataset.samples if s.image_id not in ids][:5]
    if missing:
        raise EvalError(f"{dataset.instances_json} lacks images {missing}; pass --no-ap to skip mask AP")
    return ids


def instance_metrics(dataset, evaluated: Sequence, records: Dict[str, dict], instance_ids: Dict[str, object]) -> dict:
    """Mask AP over the evaluated images, detections in dataset order (rank 0 only: COCOeval is not a sum)."""
    from ovs_ros.evaluation.instance_ap import coco_instance_ap

    results = [r for s in evaluated for r in records[s.image_id].get("instances", [])]
    if any("instances" not in records[s.image_id] for s in evaluated):
        raise EvalError("the cache holds images evaluated without instances (a --no-ap run); use --fresh")
    return coco_instance_ap(dataset.instances_json, results, [instance_ids[s.image_id] for s in evaluated])


def published_numbers(config, dataset_name: str) -> dict:
    """metric -> number from the `published:` map of the config's classifier card (or, for a generator that
    classifies by itself such as FC-CLIP alone, of its generator card), with the generator it was made with and
    whether this config uses that generator (the MaskCLIP++ numbers are FC-CLIP's pairings, not Mask2Former's)."""
    from ovs_ros.models.cards import ModelCard
    from ovs_ros.paths import resolve_data_path

    prefix = PUBLISHED_PREFIX.get(dataset_name)
    card_name = config.classifier.card or config.generator.card  # a generator card's numbers are its own, alone
    if not card_name or prefix is None:
        return {}
    card = ModelCard.from_yaml(resolve_data_path(card_name, "models"))
    published = card.published or {}
    generator = published.get("generator")
    same = generator is None or str(config.generator.card or "").startswith(str(generator))
    found: dict = {}
    for key, value in published.items():
        metric = CARD_METRICS.get(key[len(prefix) + 1:]) if key.startswith(prefix + "_") else None
        if metric is not None:  # else another benchmark, or a variant such as ade150_pq_maftp_l_pan
            found[metric] = {"value": value, "card": card.name, "generator": generator, "same_generator": bool(same)}
    return found


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def markdown_table(report: dict) -> str:
    lines = [f"# ovs-eval: {report['config_name']} on {report['dataset']}", "",
             f"{report['evaluated']} of {report['num_images']} images evaluated, {len(report['errors'])} failed.", "",
             "| metric | this run | published | published with |", "|---|---|---|---|"]
    published = report["published"]
    for key, value in report["metrics"].items():
        pub = published.get(key)
        ours = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"| {key} | {ours} | {'' if pub is None else pub['value']} | {_published_with(pub)} |")
    for key, pub in published.items():
        if key not in report["metrics"]:
            lines.append(f"| {key} | not measured | {pub['value']} | {_published_with(pub)} |")
    if report["errors"]:
        lines += ["", "Failed images:", ""] + [f"- {e['image_id']}: {e['error']}" for e in report["errors"][:20]]
    return "\n".join(lines) + "\n"


def _published_with(pub: Optional[dict]) -> str:
    if pub is None:
        return ""
    text = pub["card"] if not pub.get("generator") else f"{pub['card']} + {pub['generator']}"
    return text if pub.get("same_generator", True) else text + " (another generator than this run's)"


def write_overlay(path: Path, rgb: np.ndarray, result) -> None:
    import cv2

    from ovs_ros.overlay import render_overlay

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(render_overlay(rgb, result), cv2.COLOR_RGB2BGR))


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from ovs_ros.cli import add_config_overrides
    from ovs_ros.evaluation.datasets import DATASETS

    parser = argparse.ArgumentParser(prog="ovs-eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="segmenter config: a name in config/segmenter/ or a YAML")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--root", required=True, help="datasets root, the references' $DETECTRON2_DATASETS")
    parser.add_argument("--vocabulary", default=None,
                        help="the benchmark vocabulary file (.yaml/.tsv) when config/vocabularies/ lacks it "
                             "(ADE20K-847, PASCAL Context 459: shared/data/vocabularies/*.tsv)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    parser.add_argument("--device", default=None, help="override the config's device (cpu, cuda, auto)")
    parser.add_argument("--out", default="eval_out", help="results, overlays and the per-image cache (resume)")
    parser.add_argument("--overlays", type=int, default=4, help="overlay images to write (first images of rank 0)")
    parser.add_argument("--fresh", action="store_true", help="discard the cache in --out and start over")
    parser.add_argument("--no-ap", action="store_true",
                        help="skip mask AP (it keeps up to 100 detections per image in the cache)")
    parser.add_argument("--verbose", "-v", action="store_true")
    add_config_overrides(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from ovs_ros.cli import config_overrides
    from ovs_ros.evaluation.datasets import load_dataset
    from ovs_ros.segmenter import Segmenter
    from ovs_ros.segmenter_config import load_segmenter_config
    from ovs_ros.vocabulary import seen_classes

    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {args.limit}")
    ctx = init_distributed(args.device)
    try:
        dataset = load_dataset(args.dataset, args.root, args.vocabulary)
        samples = dataset.samples[: args.limit] if args.limit else dataset.samples
        overrides = config_overrides(args)
        if "vocabulary" in overrides:
            raise EvalError("the dataset decides the vocabulary (its classes are the label values); pass a benchmark "
                            "vocabulary file with --vocabulary instead of --set vocabulary=")
        if ctx.device or args.device:
            overrides["device"] = ctx.device or args.device
        config = load_segmenter_config(args.config, overrides)
        instance_ids = instance_image_ids(dataset, args.no_ap)
        if instance_ids is None and dataset.instances_json is not None and not args.no_ap and ctx.rank == 0:
            LOG.warning("mask AP not measured: no instance annotations at %s", dataset.instances_json)
        out = Path(args.out).expanduser()
        fingerprint = dict(run_fingerprint(args, config, dataset), mask_ap=instance_ids is not None)
        prepare_out(out, fingerprint, args.fresh, ctx)
        cached, broken = read_cache(out)
        if broken and ctx.rank == 0:
            LOG.warning("%d unreadable cache line(s) (an interrupted write); those images are evaluated again", broken)

        segmenter = Segmenter.from_config(dataclasses.replace(config, vocabulary=dataset.vocabulary))
        seen = seen_classes(dataset.vocabulary, segmenter.generator.config.class_synonyms)
        shard = [s for s in samples[ctx.rank::ctx.world] if s.image_id not in cached]
        new_records: Dict[str, dict] = {}
        errors: List[dict] = []
        overlays_left = args.overlays if ctx.rank == 0 else 0
        cache_file = out / CACHE_DIR / f"stats-{ctx.rank}.jsonl"
        with open(cache_file, "a") as cache, torch.inference_mode():
            for sample in tqdm(shard, desc=f"ovs-eval {dataset.name}", disable=ctx.rank != 0, unit="img"):
                try:
                    record, rgb, result = evaluate_sample(
                        segmenter, dataset, sample, None if instance_ids is None else instance_ids[sample.image_id])
                except Exception as exc:  # counted and listed; the run goes on (a bad file, an OOM frame)
                    errors.append({"image_id": sample.image_id, "error": f"{type(exc).__name__}: {exc}"})
                    LOG.warning("%s: %s", sample.image_id, errors[-1]["error"])
                    continue
                cache.write(json.dumps(record) + "\n")
                cache.flush()
                new_records[sample.image_id] = record
                if overlays_left > 0:
                    write_overlay(out / "overlays" / f"{sample.image_id}.jpg", rgb, result)
                    overlays_left -= 1

        records = dict(cached)
        all_errors: List[dict] = []
        for shard_records, shard_errors in ctx.gather((new_records, errors)):
            records.update(shard_records)
            all_errors.extend(shard_errors)
        order = {s.image_id: i for i, s in enumerate(samples)}
        all_errors.sort(key=lambda e: order[e["image_id"]])
        evaluated = [s for s in samples if s.image_id in records]
        summary = summarise(dataset, samples, records, seen)
        if instance_ids is not None and ctx.rank == 0:
            summary["metrics"].update(instance_metrics(dataset, evaluated, records, instance_ids))
        report = {
            "dataset": dataset.name,
            "config_name": str(args.config),
            "overrides": overrides,
            "num_images": len(samples),
            "evaluated": len(evaluated),
            "from_cache": sum(1 for s in samples if s.image_id in cached),
            "computed": sum(1 for s in samples if s.image_id in records and s.image_id not in cached),
            "world_size": ctx.world,
            "errors": all_errors,
            "metrics": summary["metrics"],
            "published": published_numbers(config, dataset.name),
            "seconds_per_image": float(np.mean([records[s.image_id]["seconds"] for s in evaluated]))
            if evaluated else None,
            "segmenter": segmenter.describe(),
            "per_class": summary["per_class"],
        }
        report = _json_safe(report)
        if ctx.rank == 0:
            (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
            (out / "metrics.md").write_text(markdown_table(report))
        return report
    finally:
        ctx.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = run(args)
    except (EvalError, FileNotFoundError, ValueError) as exc:
        print(f"ovs-eval: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(markdown_table(report), end="")
    if report["evaluated"] == 0:
        print("ovs-eval: error: no image could be evaluated", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
