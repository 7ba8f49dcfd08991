"""A shuffling sampler that can resume in the middle of an epoch, on one process or on each DDP rank.

The order of epoch `e` depends only on (seed, e), so after a restart the sampler can skip exactly the
batches that were already trained on and the run goes on as if it had never stopped.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
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


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The row order of epoch `epoch`: the same seeded permutation as ResumableSampler's (int64 array)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).numpy().astype(np.int64)


class SourcePlan:
    """The global batches (all DDP ranks together) of one training source, epoch by epoch.

    `kind="random"` cuts the epoch's seeded permutation into batches; `kind="no_duplicates"` fills them with
    `plan_no_duplicates` from the same permutation, using `hashes(epoch)` ((N, c) int64 text hashes of that
    epoch's rows). Every epoch has exactly `count` batches of `sizes` (see `batch_sizes`), so the loader's
    length is exact. The plan is a pure function of (rows, seed, epoch, batch size, world size, drop_last).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        world: int = 1,
        drop_last: bool = False,
        kind: str = "random",
        hashes: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        from embedexp.data.no_duplicates import batch_sizes

        if kind not in ("random", "no_duplicates"):
            raise ValueError(f"unknown batch plan kind {kind!r}")
        if kind == "no_duplicates" and hashes is None:
            raise ValueError("a no_duplicates plan needs the rows' hashes")
        self.n, self.seed, self.shuffle, self.kind, self.hashes = n, seed, shuffle, kind, hashes
        self.sizes = batch_sizes(n, batch_size, world, drop_last)
        self.forced = 0  # rows of the last planned epoch that had to repeat a text
        self._cache: tuple[int, list[np.ndarray]] | None = None

    @property
    def count(self) -> int:
        """Batches per epoch."""
        return len(self.sizes)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of `epoch` (row-index arrays), computed once per epoch."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = epoch_order(self.n, self.seed, epoch, self.shuffle)
        if self.kind == "random":
            bounds = np.cumsum([0, *self.sizes])
            out = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            from embedexp.data.no_duplicates import plan_no_duplicates

            plan = plan_no_duplicates(self.hashes(epoch), order, self.sizes)
            out, self.forced = plan.batches, plan.forced
        self._cache = (epoch, out)
        return out


class ResumableBatchSampler:
    """Batches for one rank, from one or several sources (`schedule`: which source each batch comes from).

    Yields lists of keys `(source, row, source_epoch)`; `source_epoch` is the epoch of that source whose rows
    (and re-drawn negatives) the batch holds. Global batch `b` of a source is split into `world` equal parts and
    rank r takes part r, so the ranks' batches of one step together are that one global batch (no text repeats
    across ranks with a no-duplicates plan). Resumable: `skip_batches(epoch, k)` skips the first k batches of
    that epoch, and the order of every epoch depends only on (seed, epoch), so a restart continues exactly.
    Lightning calls `set_epoch` through `batch_sampler.sampler`, which is this object.
    """

    def __init__(self, sources: list[SourcePlan], schedule, rank: int = 0, world: int = 1) -> None:
        self.sources, self.schedule, self.rank, self.world = sources, schedule, rank, world
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    @property
    def sampler(self) -> "ResumableBatchSampler":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_batches(self, epoch: int, batches: int) -> None:
        """After a restart: epoch `epoch` already trained on its first `batches` batches."""
        self._skip = (int(epoch), int(batches))

    def global_batches(self, epoch: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """(source, source_epoch, global batch rows) of every batch of `epoch`, skipped ones included."""
        for source, stream in self.schedule.epoch(epoch):
            plan = self.sources[source]
            source_epoch, k = divmod(stream, plan.count)
            yield source, source_epoch, plan.batches(source_epoch)[k]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        skip = self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0
        for j, (source, source_epoch, rows) in enumerate(self.global_batches(self.epoch)):
            if j < skip:
                continue
            part = len(rows) // self.world
            mine = rows[self.rank * part : (self.rank + 1) * part]
            yield [(source, int(r), source_epoch) for r in mine]

    def __len__(self) -> int:
        # the full epoch: Lightning sizes its loops (and the LR schedule) from this
        return self.schedule.count
