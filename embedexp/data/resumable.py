"""A shuffling sampler that can resume in the middle of an epoch, on one process or on each DDP rank.

The order of epoch `e` depends only on (seed, e), so after a restart the sampler can skip exactly the
batches that were already trained on and the run goes on as if it had never stopped.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Row indices for one rank: a seeded permutation per epoch, optionally minus the first `skip` batches.

    Under DDP (world > 1) every rank draws the same permutation, drops the tail that does not divide
    evenly, and takes rows `rank, rank + world, ...`, so all ranks see equally many rows.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches already done in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_batches(self, epoch: int, batches: int) -> None:
        """After a restart: epoch `epoch` already trained on its first `batches` batches."""
        self._skip = (int(epoch), int(batches))

    def _order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        if self.world > 1:
            order = order[: (self.n // self.world) * self.world][self.rank :: self.world]
        return order

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1] * self.batch_size :]
        return iter(order)

    def __len__(self) -> int:
        # the full epoch: Lightning sizes its loops (and the LR schedule) from this
        return self.n // self.world if self.world > 1 else self.n
