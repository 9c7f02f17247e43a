"""Training checkpoints that resume exactly: what a run needs to continue as if it had never stopped.

A checkpoint holds the trained tensors (the rest of the model is rebuilt from the base weights and the seed), the
AdamW, LambdaLR and GradScaler states, every random state the main process draws from (python `random`, numpy's
global RNG, torch's CPU and CUDA RNGs, the synonym-sampling generator) and the data position (the global step: the
data stream of `sampling.TrainingStream` is a pure function of the seed and the position, and the DataLoader
workers' seeds of (seed, rank, worker), so nothing else of the loader needs saving).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

CHECKPOINT_FORMAT = "ovs_training_checkpoint"
CHECKPOINT_VERSION = 2


def rng_states(generators: Dict[str, torch.Generator]) -> Dict[str, Any]:
    """Every RNG state of this process, plus the named torch generators."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_rng_states(states: Dict[str, Any], generators: Dict[str, torch.Generator]) -> None:
    """Put back what `rng_states` saved; a generator missing from the checkpoint is an error."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        if not torch.cuda.is_available() or torch.cuda.device_count() < len(states["cuda"]):
            raise RuntimeError(f"the checkpoint holds {len(states['cuda'])} CUDA RNG state(s), this machine has "
                               f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} device(s)")
        torch.cuda.set_rng_state_all(states["cuda"])
    missing = sorted(set(generators) - set(states["generators"]))
    if missing:
        raise KeyError(f"checkpoint has no state for generator(s) {missing}")
    for name, g in generators.items():
        g.set_state(states["generators"][name])


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """A checkpoint written by `Trainer.save_checkpoint`, checked for its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
        raise ValueError(f"{path}: not an ovs_training checkpoint (format {fmt!r})")
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint format_version {ckpt.get('format_version')!r}, this version resumes "
                         f"{CHECKPOINT_VERSION} only")
    return ckpt
