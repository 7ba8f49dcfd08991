"""LightningDataModule: a TrainSet -> batches of tokenised columns."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from embedexp.data.resumable import ResumableSampler
from embedexp.data.train_sets import TrainSet, build_train_set
from embedexp.errors import ConfigError

Tokenize = Callable[[list[str], str], dict[str, torch.Tensor]]


class _Rows(Dataset):
    def __init__(self, train_set: TrainSet) -> None:
        self.train_set = train_set

    def __len__(self) -> int:
        return len(self.train_set)

    def __getitem__(self, i: int):
        labels = self.train_set.labels
        return self.train_set.get(i), (labels[i] if labels is not None else None)


class ColumnCollator:
    """Tokenise each column with its kind's prefix; runs inside DataLoader workers when num_workers > 0."""

    def __init__(self, tokenize: Tokenize, kinds: tuple[str, ...]) -> None:
        self.tokenize = tokenize
        self.kinds = kinds

    def __call__(self, items) -> dict[str, Any]:
        rows = [r for r, _ in items]
        texts = [[row[c] for row in rows] for c in range(len(self.kinds))]
        features = [self.tokenize(col, kind) for col, kind in zip(texts, self.kinds)]
        batch: dict[str, Any] = {"features": features, "texts": texts, "kinds": self.kinds}
        if items[0][1] is not None:
            batch["labels"] = torch.tensor([lab for _, lab in items], dtype=torch.float32)
        return batch


class EmbeddingDataModule(L.LightningDataModule):
    """`train` says where the rows come from; `name`, `root` and `eval_sets` are read by other groups."""

    def __init__(
        self,
        train: dict,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        on_error: str = "raise",
        seed: int = 0,
        name: str = "",
        root: str | None = None,
        eval_sets: dict | None = None,
        dev_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r}; expected a positive integer")
        self.train_spec = dict(train)
        self.train_spec.setdefault("on_error", on_error)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.name = name
        self.train_set: TrainSet | None = None
        self.dev_fraction = dev_fraction
        self.dev_rows: list[tuple[str, ...]] = []  # held-out rows by query (data.dev_fraction), see dev_split
        self.dev_corpus: list[str] = []  # every positive/negative text of the whole training data
        self.tokenize: Tokenize | None = None
        self.sampler: ResumableSampler | None = None
        self._resume: tuple[int, int] | None = None
        self._fingerprint: str | None = None

    def load(self) -> TrainSet:
        """Read and validate the training data (cheap; done before any model loads)."""
        if self.train_set is None:
            full = build_train_set(self.train_spec, seed=self.seed)
            if self.dev_fraction:
                from embedexp.data.dev_split import split_by_query

                self.dev_corpus = list(dict.fromkeys(t for row in full.rows for t in row[1:]))
                full, self.dev_rows = split_by_query(full, self.dev_fraction, self.seed)
            self.train_set = full
        return self.train_set

    def set_train_set(self, train_set: TrainSet) -> None:
        """Replace the rows (a miner adds negative columns before training)."""
        self.train_set = train_set
        self._fingerprint = None

    def fingerprint(self) -> str:
        """A 16-hex-digit digest of the training rows as trained on: columns, kinds, every text, labels.

        Stable across processes and machines (blake2b, not Python's salted `hash`); includes a miner's added
        negatives, since they are columns of the rows. Computed once per train set (about 1 s per GB of text).
        """
        if self._fingerprint is None:
            ts = self.load()
            h = hashlib.blake2b(digest_size=8)
            h.update(repr((ts.columns, ts.kinds, len(ts.rows))).encode())
            for row in ts.rows:
                h.update("\x1f".join(row).encode("utf-8", "surrogatepass"))
                h.update(b"\x1e")
            if ts.labels is not None:
                h.update(repr([float(x) for x in ts.labels]).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def position_record(self, world_size: int = 1) -> dict:
        """What a saved data position (epoch, batches done) depends on; stored in resume checkpoints.

        The sampler's order of epoch `e` is a function of (rows, seed, shuffle, world size), a position counts
        batches of `batch_size` rows per rank, and `drop_last` decides whether an epoch's last partial batch
        exists; resuming with any of them changed would retrain or skip rows (embedexp.checkpointing compares).
        """
        return {
            "batch_size": int(self.batch_size),
            "seed": int(self.seed),
            "shuffle": bool(self.shuffle),
            "drop_last": bool(self.drop_last),
            "world_size": int(world_size),
            "rows": len(self.load()),
            "fingerprint": self.fingerprint(),
        }

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Restarting from a checkpoint: epoch `epoch` already trained on its first `batches_done` batches."""
        self._resume = (int(epoch), int(batches_done))

    def set_tokenizer(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def train_dataloader(self) -> DataLoader:
        if self.tokenize is None:
            raise RuntimeError("EmbeddingDataModule.set_tokenizer(encoder.tokenize) must be called before training")
        ts = self.load()
        g = torch.Generator()  # the loader's own seeds: iterating never draws from the global RNG
        g.manual_seed(self.seed)
        rank, world = 0, 1
        trainer = getattr(self, "trainer", None)
        if (
            trainer is not None
            and trainer.world_size > 1
            and not trainer._accelerator_connector.use_distributed_sampler
        ):
            rank, world = trainer.global_rank, trainer.world_size  # we split the rows ourselves (resumable)
        self.sampler = ResumableSampler(len(ts), self.batch_size, self.seed, self.shuffle, rank, world)
        if self._resume is not None:
            self.sampler.skip_batches(*self._resume)
            self.sampler.set_epoch(self._resume[0])
        return DataLoader(
            _Rows(ts),
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            collate_fn=ColumnCollator(self.tokenize, ts.kinds),
            generator=g,
            persistent_workers=self.num_workers > 0,
        )
