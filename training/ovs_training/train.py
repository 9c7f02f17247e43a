"""`python -m ovs_training.train --config training/configs/tiny_synthetic.yaml [--max-iter N] [--output-dir D]
[--resume RUN/checkpoints/step_N.pth]`; under `torchrun --nproc_per_node N` data-parallel (`distributed.py`)."""
from __future__ import annotations

import argparse
import logging
import statistics
from typing import List, Optional

from .config import load_train_config
from .distributed import init_from_env, world
from .trainer import Trainer


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="MaskCLIP++ fine-tuning of an ovs_ros CLIP classifier")
    parser.add_argument("--config", required=True, help="training YAML (training/configs/*.yaml)")
    parser.add_argument("--max-iter", type=int, default=None, help="override max_iter")
    parser.add_argument("--output-dir", default=None, help="override output_dir")
    parser.add_argument("--device", default=None, help="override device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--resume", default=None,
                        help="continue from a checkpoint of this config (exact: same losses as an uninterrupted run)")
    parser.add_argument("--no-export", action="store_true", help="skip the safetensors + model card export")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_train_config(args.config, max_iter=args.max_iter, output_dir=args.output_dir, device=args.device,
                               resume=args.resume)
    init_from_env(config.device)  # torchrun: join the process group (no-op for one process)
    result = Trainer(config).train(export=not args.no_export)
    if world()[0] != 0:
        return 0
    if not result.losses:
        print(f"nothing to train: the checkpoint is at max_iter {config.max_iter}; run folder {result.output_dir}")
        return 0
    head, tail = result.losses[:5], result.losses[-5:]
    print(f"steps {len(result.losses)}: loss first-5 mean {statistics.mean(head):.4f}, "
          f"last-5 mean {statistics.mean(tail):.4f}; run folder {result.output_dir}")
    for kind, path in result.export.items():
        print(f"exported {kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
