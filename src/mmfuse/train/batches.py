"""The batches of a whole fit as one stream, so that loading never stops at an epoch's end.

A fit's data order is a function of `(seed, epoch)` alone, so every epoch's batches are known
before it starts. Handing the DataLoader all of them in one batch sampler lets its workers go
on into the next epoch while the training process validates and checkpoints: with a fresh
iterator per epoch, each epoch began by waiting for its first batch to be read from scratch,
which on small epochs (a few dozen batches) was a large share of the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from mmfuse import distributed
from mmfuse.distributed import DistInfo


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch: a function of (seed, epoch) only."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    return rng.permutation(n).tolist()


def epoch_batches(
    n: int, seed: int, epoch: int, size: int, dist: DistInfo
) -> list[list[tuple[int, int]]]:
    """This rank's batches of one epoch: `(epoch, row)` keys, `size` to a batch."""
    order = distributed.rank_slice(epoch_order(n, seed, epoch), dist, pad=True)
    return [[(epoch, r) for r in order[i : i + size]] for i in range(0, len(order), size)]


def batches_per_epoch(n: int, size: int, dist: DistInfo) -> int:
    """`len(epoch_batches(n, ..., size, dist))`, without drawing the order."""
    return math.ceil(math.ceil(n / dist.world) / size)


class FitBatches:
    """A DataLoader batch sampler over the epochs `start_epoch..epochs-1`, from batch `first`
    of the first one (a resumed run's position). The trainer takes `batches_per_epoch` batches
    of one iterator per epoch."""

    def __init__(
        self,
        n: int,
        seed: int,
        size: int,
        dist: DistInfo,
        epochs: int,
        start_epoch: int = 0,
        first: int = 0,
    ):
        self.n, self.seed, self.size, self.dist = n, seed, size, dist
        self.epochs, self.start_epoch, self.first = epochs, start_epoch, first

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.start_epoch, self.epochs):
            skip = self.first if epoch == self.start_epoch else 0
            yield from epoch_batches(self.n, self.seed, epoch, self.size, self.dist)[skip:]

    def __len__(self) -> int:
        total = (self.epochs - self.start_epoch) * batches_per_epoch(self.n, self.size, self.dist)
        return max(0, total - self.first)
