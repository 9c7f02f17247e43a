"""Data-parallel training under `torchrun` (MaskCLIP++ trains with detectron2's DDP launcher).

`torchrun --nproc_per_node N -m ovs_training.train --config ...` starts N processes; each reads its slice of every
global batch (`batch_size` stays the reference's *global* batch, 4, split N ways by `sampling.TrainingStream`),
computes the loss of its local images (B = its images with a valid mask, as the reference's per-rank
`ReweightCELoss`), and the gradients are averaged over the ranks (what DDP does) before the gradient-norm clip, so
the clip sees the global gradient. Rank 0 alone writes TensorBoard, checkpoints and the export.

Per-rank seeds: python / numpy / torch RNGs (dropout) are seeded with `seed + rank` after the model is built
(the model itself is built from `seed` on every rank, so all ranks start equal) and DataLoader workers per
(seed, rank, worker). One deliberate difference from the reference: the synonym draw (one synonym per class per
step) uses the same generator on every rank, so a global batch sees one synonym per class, as the single-process
run does; that is what makes an N-process run equal the 1-process run.
"""
from __future__ import annotations

import os
import random
from datetime import timedelta
from typing import Iterable, Tuple

import numpy as np
import torch
import torch.distributed as dist


def world() -> Tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str = "auto") -> Tuple[int, int, int]:
    """Join the process group `torchrun` describes in the environment (WORLD_SIZE > 1); -> (rank, world, local).

    NCCL when the run uses CUDA, gloo on the CPU. Without torchrun's variables this is a no-op (0, 1, 0).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return 0, 1, 0
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size(), local_rank


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank global RNGs (dropout and any other draw from them differ between ranks, as in detectron2)."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2 ** 32)
    torch.manual_seed(s)


def average_gradients(params: Iterable[torch.nn.Parameter], world_size: int) -> None:
    """Gradients of all ranks averaged in place, in one flat all-reduce (a missing gradient counts as 0)."""
    if world_size <= 1:
        return
    params = list(params)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone()
        offset += n


def mean_over_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of a scalar over the ranks (the logged loss)."""
    if world_size <= 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world_size


def gather_objects(obj, world_size: int):
    """`[obj of rank 0, obj of rank 1, ...]` on every rank (RNG states for the checkpoint)."""
    if world_size <= 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
