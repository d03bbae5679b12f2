"""Resumable, sharded batch sampler that yields ``(epoch, index)`` items.

Data order is a pure function of ``(seed, step)``, so a training run resumes at any step
without replaying or saving anything:

- The item stream is the concatenation of one permutation of ``range(num_items)`` per epoch,
  drawn from ``numpy.random.SeedSequence([seed, epoch])`` (PCG64: the same on every machine).
  Stream position ``p`` holds item ``(p // num_items, perm_epoch[p % num_items])``.
- Global step ``s`` (the number of optimiser updates done before it) consumes stream positions
  ``[s * B, (s + 1) * B)`` where ``B`` is the *global* batch size; a batch may straddle two
  epochs, no item is dropped and the dataset may be smaller than a batch.
- With ``world_size`` processes, rank ``r`` takes the ``r``-th contiguous slice of ``B /
  world_size`` positions of each global batch, so the union over ranks is exactly the batch of
  a single-process run with the same global batch size.
- Starting at step ``s`` computes the positions directly: consumed batches are never loaded.

Datasets receive ``(epoch, index)`` and must be a deterministic function of it; draw any
augmentation randomness from :func:`item_rng` / :func:`item_generator` rather than from the
global RNGs, so that the data do not depend on which worker process loads them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

Item = tuple[int, int]


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A numpy generator that depends only on ``(seed, epoch, index)``."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU torch generator that depends only on ``(seed, epoch, index)``."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


class ResumableBatchSampler(Sampler[list[Item]]):
    """Batches of ``(epoch, index)`` for global steps ``start_step .. end_step - 1`` of one rank.

    ``batch_size`` is the global batch size (all ranks together); it must be divisible by
    ``world_size``. ``end_step=None`` makes the sampler infinite. ``shuffle=False`` keeps
    every epoch in index order.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        end_step: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if num_items < 1:
            raise ValueError(f"the dataset is empty (num_items={num_items})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(
                f"the global batch_size {batch_size} is not divisible by the {world_size} processes"
            )
        if start_step < 0 or (end_step is not None and end_step < start_step):
            raise ValueError(f"invalid step range [{start_step}, {end_step})")
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.local_batch_size = self.batch_size // world_size
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.end_step = None if end_step is None else int(end_step)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the items in ``epoch`` (identity when ``shuffle`` is off)."""
        perm = self._perms.get(epoch)
        if perm is None:
            if self.shuffle:
                perm = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_items)
            else:
                perm = np.arange(self.num_items)
            self._perms[epoch] = perm
            while len(self._perms) > 2:
                self._perms.popitem(last=False)
        return perm

    def positions(self, step: int) -> range:
        """Stream positions of this rank's share of global step ``step``."""
        begin = step * self.batch_size + self.rank * self.local_batch_size
        return range(begin, begin + self.local_batch_size)

    def batch(self, step: int) -> list[Item]:
        """This rank's ``(epoch, index)`` items of global step ``step``."""
        items = []
        for p in self.positions(step):
            epoch, offset = divmod(p, self.num_items)
            items.append((epoch, int(self.permutation(epoch)[offset])))
        return items

    def __iter__(self) -> Iterator[list[Item]]:
        step = self.start_step
        while self.end_step is None or step < self.end_step:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.end_step is None:
            raise TypeError("an open-ended ResumableBatchSampler has no length")
        return self.end_step - self.start_step
