"""The training data stream: which sample each rank reads at each step, and the random draws of its augmentation.

detectron2's `TrainingSampler` (MaskCLIP++'s loader) is an infinite stream: each epoch a fresh permutation of the
dataset, batches taken from the stream across epoch boundaries. Here the permutation of epoch `e` is drawn from
`(seed, e)` and the augmentation of sample `i` in epoch `e` from `(seed, e, i)`, so

* no two samples, and therefore no two DataLoader workers, share a random stream, and epochs differ;
* the stream is a pure function of the seed and the position: the result is the same with 0 or 8 workers, on any
  number of ranks (global batch `k` is the same images however it is split), and a resumed run restarts it at the
  saved position (`start_batch`) without replaying anything.

The global stream position `p` holds `permutation(p // n)[p % n]`; global batch `k` is positions
`[k G, (k + 1) G)` and rank `r` of `W` reads its slice `[k G + r G / W, k G + (r + 1) G / W)`.
"""
from __future__ import annotations

import random
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

SampleKey = Tuple[int, int]  # (epoch, dataset index)


def epoch_permutation(size: int, seed: int, epoch: int) -> np.ndarray:
    """The dataset order of one epoch."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(size))


def check_trainable_size(size: int, global_batch: int) -> None:
    """A clear error instead of a stream that cannot fill one batch (the old loader looped forever on it)."""
    if size <= 0:
        raise ValueError("the training dataset is empty (no image left after reading / filtering): nothing to train")
    if size < global_batch:
        raise ValueError(f"the training dataset has {size} image(s), fewer than one batch of {global_batch}: "
                         f"lower batch_size or add images")


class TrainingStream(Sampler):
    """Infinite `(epoch, index)` keys of one rank, from global batch `start_batch` on.

    Args:
        size: dataset length.
        global_batch: images per optimizer step over all ranks (MaskCLIP++ `IMS_PER_BATCH`, 4).
        seed: the run's seed.
        rank, world_size: this process and the number of data-parallel processes.
        start_batch: the first global batch to yield (a resumed run: the steps already done).
    """

    def __init__(self, size: int, global_batch: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0):
        check_trainable_size(size, global_batch)
        if world_size < 1 or not 0 <= rank < world_size or global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not split over {world_size} ranks (rank {rank})")
        self.size = int(size)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.local_batch = self.global_batch // self.world_size
        self.start_batch = int(start_batch)

    def __iter__(self) -> Iterator[SampleKey]:
        batch = self.start_batch
        cached_epoch, perm = -1, None
        while True:
            first = batch * self.global_batch + self.rank * self.local_batch
            for pos in range(first, first + self.local_batch):
                epoch, offset = divmod(pos, self.size)
                if epoch != cached_epoch:
                    cached_epoch, perm = epoch, epoch_permutation(self.size, self.seed, epoch)
                yield epoch, int(perm[offset])
            batch += 1


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample's augmentation."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class AugmentedDataset(Dataset):
    """`dataset[(epoch, index)]` -> `transform(dataset[index], rng(seed, epoch, index))` (or the sample as read).

    Exposes the base dataset's `vocabulary` and length.
    """

    def __init__(self, dataset: Dataset, transform: Optional[Callable] = None, *, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.vocabulary = getattr(dataset, "vocabulary", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> Dict[str, Tensor]:
        epoch, index = key
        sample = self.dataset[int(index)]
        if self.transform is None:
            return sample
        return self.transform(sample, augmentation_rng(self.seed, epoch, index))


def worker_seed(seed: int, rank: int, worker_id: int) -> int:
    """The global-RNG seed of one DataLoader worker (for third-party randomness inside a transform)."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(worker_id)]).generate_state(1)[0])


class SeedWorker:
    """`worker_init_fn`: python `random`, numpy's global RNG and torch seeded per (seed, rank, worker), as
    detectron2's `worker_init_reset_seed` seeds each worker apart. Our own augmentation does not read them."""

    def __init__(self, seed: int, rank: int = 0):
        self.seed = int(seed)
        self.rank = int(rank)

    def __call__(self, worker_id: int) -> None:
        s = worker_seed(self.seed, self.rank, worker_id)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
