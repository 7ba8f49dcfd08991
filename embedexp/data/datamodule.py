"""LightningDataModule: one or several TrainSets -> batches of tokenised columns.

Batches come from `ResumableBatchSampler` (embedexp.data.resumable): a seeded, resumable plan per epoch,
`data.batch_sampler=no_duplicates` (no text repeated in any column of a batch, embedexp.data.no_duplicates) or
`random`; `auto` (the default) picks no_duplicates for losses with in-batch negatives (the loss class has
`in_batch_negatives = True`) and random otherwise. `data.train` may name several sources (embedexp.data.mixture);
every batch comes from one of them.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from embedexp.data.mixture import (
    BATCH_SAMPLERS,
    MixtureConfig,
    MixtureSchedule,
    MixtureSet,
    batches_per_source,
    split_sources,
)
from embedexp.data.no_duplicates import KnownPositives, ensure_epoch, row_hashes, text_hash
from embedexp.data.resumable import ResumableBatchSampler, ResumableSampler, SourcePlan
from embedexp.data.train_sets import TrainSet, build_train_set
from embedexp.errors import ConfigError
from embedexp.losses.config import loss_attr

Tokenize = Callable[[list[str], str], dict[str, torch.Tensor]]
log = logging.getLogger(__name__)


class _Rows(Dataset):
    """Keys `(source, row, source_epoch)` (or a plain row index) -> (texts, label, meta)."""

    def __init__(self, sources: list[Any], known: list[KnownPositives | None] | None = None) -> None:
        self.sources = sources
        self.known = known or [None] * len(sources)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key):
        source, i, epoch = key if isinstance(key, tuple) else (0, key, None)
        ts = self.sources[source]
        if epoch is not None:
            ensure_epoch(ts, epoch)
        labels = ts.labels
        meta: dict[str, Any] = {"source": source}
        if self.known[source] is not None:
            meta["known"] = self.known[source].lookup(i)
        if getattr(ts, "has_scores", False):
            meta["scores"] = ts.scores(i)
        return ts.get(i), (labels[i] if labels is not None else None), meta


class ColumnCollator:
    """Tokenise each column with its kind's prefix; runs inside DataLoader workers when num_workers > 0.

    Items are `(texts, label)` or `(texts, label, meta)` (meta from the dataset: source index, known-positive
    hashes, teacher scores). The batch: `features` (one tokenised dict per column), `texts`, `kinds`, and when
    present `labels` (B,) float32, `scores` (B, n_columns - 1) float32 teacher scores (NaN where missing),
    `source` (index of the mixture source), `in_batch_negatives` (False for a source trained without them) and,
    with `mask_ids=True`, `text_ids` (one (B,) int64 tensor of text hashes per column) and `known_ids`
    ((B, K) int64: hashes of the anchor's known positives, its own positive first, padded with 0).

    Args:
        tokenize: encoder.tokenize(texts, kind).
        kinds: the column kinds ("query"/"document"), or one tuple per source for a mixture.
        mask_ids: add text_ids/known_ids for known-positive masking.
        in_batch: per source, whether its batches use in-batch negatives (default: all do).
    """

    def __init__(
        self,
        tokenize: Tokenize,
        kinds: tuple[str, ...] | list[tuple[str, ...]],
        mask_ids: bool = False,
        in_batch: list[bool] | None = None,
    ) -> None:
        self.tokenize = tokenize
        self.kinds = kinds
        self.source_kinds = list(kinds) if isinstance(kinds, list) else None
        self.mask_ids = mask_ids
        self.in_batch = in_batch

    def __call__(self, items) -> dict[str, Any]:
        rows = [it[0] for it in items]
        metas = [it[2] if len(it) > 2 else {} for it in items]
        source = int(metas[0].get("source", 0))
        kinds = self.source_kinds[source] if self.source_kinds is not None else self.kinds
        texts = [[row[c] for row in rows] for c in range(len(kinds))]
        features = [self.tokenize(col, kind) for col, kind in zip(texts, kinds)]
        batch: dict[str, Any] = {"features": features, "texts": texts, "kinds": tuple(kinds), "source": source}
        if items[0][1] is not None:
            batch["labels"] = torch.tensor([it[1] for it in items], dtype=torch.float32)
        if "scores" in metas[0]:
            width = len(kinds) - 1
            batch["scores"] = torch.tensor(
                [[math.nan if x is None else float(x) for x in (m.get("scores") or (None,) * width)] for m in metas],
                dtype=torch.float32,
            )
        if self.in_batch is not None and not self.in_batch[source]:
            batch["in_batch_negatives"] = False
        if self.mask_ids and len(kinds) >= 2:
            ids = [[text_hash(t) for t in col] for col in texts]
            batch["text_ids"] = [torch.tensor(col, dtype=torch.int64) for col in ids]
            known = []
            for pos, m in zip(ids[1], metas):
                extra = m.get("known")
                known.append([pos] + ([int(h) for h in extra if int(h) != pos] if extra is not None else []))
            width = max(len(k) for k in known)
            batch["known_ids"] = torch.tensor([k + [0] * (width - len(k)) for k in known], dtype=torch.int64)
        return batch


class EmbeddingDataModule(L.LightningDataModule):
    """`train` says where the rows come from (one train spec, or several: a mixture); `name`, `root` and
    `eval_sets` are read by other groups.

    Args (beyond the loader's usual ones):
        batch_sampler: "auto" | "no_duplicates" | "random" (see the module doc).
        mixture: `data.mixture` (strategy, temperature, weights) when `train` names several sources.
    Raises:
        ConfigError: a bad batch_size, batch_sampler or mixture option (naming the key and the value).
    """

    def __init__(
        self,
        train: Any,
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
        batch_sampler: str = "auto",
        mixture: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r}; expected a positive integer")
        if batch_sampler not in BATCH_SAMPLERS:
            raise ConfigError(f"data.batch_sampler={batch_sampler!r}; expected one of {', '.join(BATCH_SAMPLERS)}")
        self.sources = split_sources("data.train", _plain(train))
        for s in self.sources:
            s.spec.setdefault("on_error", on_error)
        self.mixture = MixtureConfig.parse("data.mixture", _plain(mixture), self.sources)
        if len(self.sources) > 1 and dev_fraction:
            raise ConfigError(
                f"data.dev_fraction={dev_fraction} with {len(self.sources)} training sources; a dev split is taken "
                "from one source only: expected data.dev_fraction=0 (and an eval set) for a mixture"
            )
        self.train_spec = self.sources[0].spec  # the single source (kept for callers that read it)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.name = name
        self.batch_sampler = batch_sampler
        self.in_batch_negatives: bool | None = None  # from the loss (use_loss); None = not told yet
        self.mask_known_positives = False
        self.train_set: TrainSet | MixtureSet | None = None
        self.source_sets: list[Any] = []
        self.dev_fraction = dev_fraction
        self.dev_rows: list[tuple[str, ...]] = []  # held-out rows by query (data.dev_fraction), see dev_split
        self.dev_corpus: list[str] = []  # every positive/negative text of the whole training data
        self.tokenize: Tokenize | None = None
        self.sampler: ResumableBatchSampler | None = None
        self._resume: tuple[int, int] | None = None
        self._fingerprint: str | None = None
        self._hashes: dict[tuple[int, int | None], np.ndarray] = {}

    # ------------------------------------------------------------------ rows
    def load(self) -> TrainSet | MixtureSet:
        """Read and validate the training data (cheap; done before any model loads). A MixtureSet for several
        sources (columns: the prefix every source shares)."""
        if self.train_set is None:
            sets = []
            for i, source in enumerate(self.sources):
                full = build_train_set(source.spec, seed=self.seed)
                if self.dev_fraction and i == 0:
                    from embedexp.data.dev_split import split_by_query

                    self.dev_corpus = list(dict.fromkeys(t for row in full.rows for t in row[1:]))
                    full, self.dev_rows = split_by_query(full, self.dev_fraction, self.seed)
                sets.append(full)
            self.source_sets = sets
            self.train_set = sets[0] if len(sets) == 1 else MixtureSet([s.name for s in self.sources], sets)
        return self.train_set

    def set_train_set(self, train_set: TrainSet) -> None:
        """Replace the rows (a miner adds negative columns before training); single-source data only."""
        if len(self.sources) > 1:
            raise ConfigError("a miner cannot run on a mixture of training sources (data.train names several)")
        self.train_set = train_set
        self.source_sets = [train_set]
        self._fingerprint = None
        self._hashes.clear()

    def use_loss(self, loss: Any) -> None:
        """Read what the batches must serve from the loss (duck-typed; Matryoshka's wrapped loss is looked at
        too): `in_batch_negatives` (picks the no-duplicates sampler for batch_sampler=auto) and
        `mask_known_positives` (adds text_ids/known_ids to each batch)."""
        self.in_batch_negatives = bool(loss_attr(loss, "in_batch_negatives"))
        self.mask_known_positives = bool(loss_attr(loss, "mask_known_positives")) and self.in_batch_negatives

    def sampler_kind(self, source: int = 0) -> str:
        """The batch plan of `source`: no_duplicates or random (a source without in-batch negatives: random)."""
        if not self.sources[source].in_batch_negatives:
            return "random"
        if self.batch_sampler != "auto":
            return self.batch_sampler
        return "random" if self.in_batch_negatives is False else "no_duplicates"

    def fingerprint(self) -> str:
        """A 16-hex-digit digest of the training rows as trained on: columns, kinds, every text, labels.

        Stable across processes and machines (blake2b, not Python's salted `hash`); includes a miner's added
        negatives, since they are columns of the rows. Computed once per train set (about 1 s per GB of text).
        A mixture combines its sources' fingerprints with their names.
        """
        if self._fingerprint is None:
            ts = self.load()
            if isinstance(ts, MixtureSet):
                import hashlib

                h = hashlib.blake2b(digest_size=8)
                for name, s in zip(ts.names, ts.sets):
                    h.update(f"{name}\x1f{s.fingerprint()}\x1e".encode())
                self._fingerprint = h.hexdigest()
            else:
                self._fingerprint = self.load().fingerprint()  # TrainSet.fingerprint: lazy for table-backed rows
        return self._fingerprint

    def position_record(self, world_size: int = 1) -> dict:
        """What a saved data position (epoch, batches done) depends on; stored in resume checkpoints.

        The sampler's order of epoch `e` is a function of (rows, seed, shuffle, world size, batch sampler,
        mixture), a position counts batches of `batch_size` rows per rank, and `drop_last` decides whether an
        epoch's last partial batch exists; resuming with any of them changed would retrain or skip rows
        (embedexp.checkpointing compares).
        """
        self.load()
        record = {
            "batch_size": int(self.batch_size),
            "seed": int(self.seed),
            "shuffle": bool(self.shuffle),
            "drop_last": bool(self.drop_last),
            "world_size": int(world_size),
            "rows": len(self.load()),
            "fingerprint": self.fingerprint(),
            # the configured value: `auto` resolves from the loss, which a resumed run shares
            "batch_sampler": self.batch_sampler,
        }
        if len(self.sources) > 1:
            record["mixture"] = repr(
                ([(s.name, s.in_batch_negatives) for s in self.sources], sorted(self.mixture.record().items()))
            )
        return record

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Restarting from a checkpoint: epoch `epoch` already trained on its first `batches_done` batches."""
        self._resume = (int(epoch), int(batches_done))

    def set_tokenizer(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def setup(self, stage: str | None = None) -> None:
        self.load()

    # ------------------------------------------------------------------ batches
    def hashes(self, source: int, epoch: int | None = None) -> np.ndarray:
        """(N, c) int64 text hashes of a source's rows; per epoch for sets that re-draw texts (set_epoch)."""
        ts = self.source_sets[source]
        key = (source, epoch if _redraws(ts) else None)
        if key not in self._hashes:
            if key[1] is not None:  # keep only the newest epoch of a re-drawing set (plus the static ones)
                for k in [k for k in self._hashes if k[0] == source and k[1] is not None]:
                    del self._hashes[k]
            self._hashes[key] = row_hashes(ts, key[1] if key[1] is not None else None)
        return self._hashes[key]

    def known_positives(self, source: int) -> KnownPositives | None:
        """The known-positive index of a source (None when masking is off or the source has < 2 columns)."""
        ts = self.source_sets[source]
        if not self.mask_known_positives or not self.sources[source].in_batch_negatives or len(ts.columns) < 2:
            return None
        return KnownPositives.build(self.hashes(source, 0), ts)

    def build_batch_sampler(self, rank: int = 0, world: int = 1) -> ResumableBatchSampler:
        """The resumable batch sampler of this rank (every rank builds the same global plan)."""
        self.load()
        plans = []
        for i, ts in enumerate(self.source_sets):
            kind = self.sampler_kind(i)
            plans.append(
                SourcePlan(
                    len(ts),
                    self.batch_size,
                    self.seed + 7919 * i,  # each source its own order; source 0 keeps the single-source order
                    self.shuffle,
                    world,
                    self.drop_last,
                    kind,
                    hashes=(lambda epoch, i=i: self.hashes(i, epoch)) if kind == "no_duplicates" else None,
                )
            )
        empty = [s.name for s, p in zip(self.sources, plans) if p.count == 0]
        if empty:
            raise ConfigError(
                f"data.train source {empty[0]!r} has fewer rows than one batch of data.batch_size={self.batch_size} x "
                f"{world} device(s) with data.drop_last={self.drop_last}; expected a smaller batch or more rows"
            )
        per_epoch = batches_per_source(
            self.mixture, [s.name for s in self.sources], [p.count for p in plans], [len(s) for s in self.source_sets]
        )
        schedule = MixtureSchedule(per_epoch, self.mixture.strategy, self.seed, self.shuffle)
        return ResumableBatchSampler(plans, schedule, rank, world)

    def collator(self) -> ColumnCollator:
        sets = self.source_sets
        kinds = tuple(sets[0].kinds) if len(sets) == 1 else [tuple(s.kinds) for s in sets]
        in_batch = [s.in_batch_negatives for s in self.sources]
        return ColumnCollator(self.tokenize, kinds, self.mask_known_positives, in_batch if not all(in_batch) else None)

    def train_dataloader(self) -> DataLoader:
        if self.tokenize is None:
            raise RuntimeError("EmbeddingDataModule.set_tokenizer(encoder.tokenize) must be called before training")
        self.load()
        g = torch.Generator()  # the loader's own seeds: iterating never draws from the global RNG
        g.manual_seed(self.seed)
        rank, world = 0, 1
        trainer = getattr(self, "trainer", None)
        if self.in_batch_negatives is None and trainer is not None:  # built outside embedexp.train: ask the loss
            module = getattr(trainer, "lightning_module", None)
            if module is not None and getattr(module, "loss", None) is not None:
                self.use_loss(module.loss)
        if trainer is not None and trainer.world_size > 1:
            if trainer._accelerator_connector.use_distributed_sampler:
                return self._lightning_split_loader(g)
            rank, world = trainer.global_rank, trainer.world_size  # we split the rows ourselves (resumable)
        self.sampler = self.build_batch_sampler(rank, world)
        if self._resume is not None:
            self.sampler.skip_batches(*self._resume)
            self.sampler.set_epoch(self._resume[0])
        known = [self.known_positives(i) for i in range(len(self.source_sets))]
        return DataLoader(
            _Rows(self.source_sets, known),
            batch_sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=self.collator(),
            generator=g,
            persistent_workers=self.num_workers > 0,
        )

    def _lightning_split_loader(self, generator: torch.Generator) -> DataLoader:
        """A Trainer with use_distributed_sampler=True (not embedexp.train's) puts its own DistributedSampler
        into a row-level loader: the plain per-row loader it can rewrite (no no-duplicates plan, one source)."""
        if len(self.source_sets) > 1:
            raise ConfigError(
                "data.train names several sources, which needs the data module to split the rows across ranks; "
                "expected a lightning.Trainer with use_distributed_sampler=False (as embedexp-train uses)"
            )
        if self.sampler_kind() == "no_duplicates":
            log.warning("use_distributed_sampler=True: Lightning splits the rows; batches are not de-duplicated")
        self.sampler = None
        return DataLoader(
            _Rows(self.source_sets, [self.known_positives(0)]),
            batch_size=self.batch_size,
            sampler=ResumableSampler(len(self.source_sets[0]), self.batch_size, self.seed, self.shuffle),
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            collate_fn=self.collator(),
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )


def _plain(value: Any) -> Any:
    """An omegaconf container -> plain dicts/lists (other values unchanged)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def _redraws(ts: Any) -> bool:
    """True for sets whose texts change with set_epoch (table-backed rows with sampled negatives/positives)."""
    rows = getattr(ts, "rows", None)
    return hasattr(rows, "set_epoch") if rows is not None else hasattr(ts, "set_epoch")
