"""Mixtures of training sources: `data.train` names several sources, each batch comes from one of them.

Config (conf/data/mixture_demo.yaml is a worked example)::

    data:
      train:                      # a mapping name -> source (or a list; names default to source_0, ...)
        qa:  {format: pairs, path: qa.jsonl}
        nli: {format: pairs, path: nli.jsonl, in_batch_negatives: false}
      mixture:
        strategy: proportional    # round_robin | proportional | temperature
        temperature: 2.0          # temperature strategy: p_s proportional to size_s ** (1 / temperature)
        weights: {qa: 3, nli: 1}  # optional: proportional/temperature use these instead of the sizes

Each source is its own train spec (format, path, columns ...), built with `build_train_set`; per-source keys
read here (not passed on): `name`, `in_batch_negatives` (false: each anchor is scored only against its own
row's positive and negatives, and the batches of that source are not de-duplicated), `weight`.

Batches per epoch (fixed, so Lightning's loop and LR schedule are exact):

* round_robin: every source gives min_s(K_s) batches, in turn (s0, s1, ..., s0, s1, ...); K_s = the source's
  own batches per epoch. Larger sources continue where they stopped in the next epoch.
* proportional: without weights, every source gives its K_s batches (each row once per epoch); with weights,
  sum_s K_s batches are shared in proportion to the weights.
* temperature: sum_s K_s batches shared with p_s proportional to w_s ** (1 / T), w_s the weight or else the
  source's number of rows (T = 1: proportional to size; T -> infinity: uniform), the sampling of
  multilingual/multi-task mixtures (Arivazhagan et al. 2019, "Massively Multilingual Neural Machine Translation
  in the Wild", section 4.2; Conneau & Lample 2019, XLM).

The counts are allocated by largest remainder (each source with p_s > 0 gets at least one batch) and the
order of sources within an epoch is a seeded shuffle (a smooth deterministic interleave with shuffle=false),
so the proportions hold exactly per epoch, not only in expectation. A source asked for more batches than it
has per epoch runs on into its next epoch (its own seeded order); the stream position of every source is a
function of the epoch alone, which makes mixtures resumable like a single source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedexp.errors import ConfigError

STRATEGIES = ("round_robin", "proportional", "temperature")
SOURCE_KEYS = ("name", "in_batch_negatives", "weight")


@dataclass
class Source:
    """One training source: its name, the spec handed to build_train_set, and the per-source switches."""

    name: str
    spec: dict
    in_batch_negatives: bool = True
    weight: float | None = None


def is_mixture(train: Any) -> bool:
    """True when `data.train` names several sources (a list, or a mapping without `format`)."""
    return isinstance(train, (list, tuple)) or (isinstance(train, dict) and "format" not in train)


def split_sources(prefix: str, train: Any) -> list[Source]:
    """`data.train` -> its sources (one for a plain train spec).

    Raises:
        ConfigError: naming `{prefix}` or `{prefix}.<source>` for a malformed entry.
    """
    if isinstance(train, dict) and "format" in train:
        return [Source("train", dict(train))]
    if isinstance(train, (list, tuple)):
        items = []
        for i, spec in enumerate(train):
            if not isinstance(spec, dict):
                raise ConfigError(f"{prefix}[{i}]={spec!r}; expected a train spec (a mapping with format and path)")
            items.append((str(spec.get("name") or f"source_{i}"), spec, f"{prefix}[{i}]"))
    elif isinstance(train, dict):
        items = [(str(k), v, f"{prefix}.{k}") for k, v in train.items()]
    else:
        raise ConfigError(f"{prefix}={train!r}; expected a train spec or several (a list or a name -> spec mapping)")
    if not items:
        raise ConfigError(f"{prefix} is empty; expected at least one training source")
    sources, names = [], set()
    for name, spec, key in items:
        if not isinstance(spec, dict) or "format" not in spec:
            raise ConfigError(f"{key}={spec!r}; expected a train spec (a mapping with format and path)")
        if name in names:
            raise ConfigError(f"{key}: source name {name!r} is used twice; expected distinct names")
        names.add(name)
        spec = dict(spec)
        opts = {k: spec.pop(k) for k in SOURCE_KEYS if k in spec}
        ibn = opts.get("in_batch_negatives", True)
        if not isinstance(ibn, bool):
            raise ConfigError(f"{key}.in_batch_negatives={ibn!r}; expected true or false")
        weight = opts.get("weight")
        if weight is not None and not _nonneg(weight):
            raise ConfigError(f"{key}.weight={weight!r}; expected a number >= 0")
        sources.append(Source(name, spec, ibn, None if weight is None else float(weight)))
    return sources


def _nonneg(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


@dataclass
class MixtureConfig:
    """`data.mixture`: how batches are shared among the sources (see the module doc)."""

    strategy: str = "proportional"
    temperature: float = 2.0
    weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, prefix: str, mixture: Any, sources: list[Source]) -> "MixtureConfig":
        """Raises ConfigError naming `{prefix}.<key>`, the value and what is expected."""
        mixture = dict(mixture or {})
        unknown = sorted(set(mixture) - {"strategy", "temperature", "weights"})
        if unknown:
            raise ConfigError(f"{prefix}.{unknown[0]} is not a mixture option; expected strategy, temperature, weights")
        strategy = mixture.get("strategy", "proportional")
        if strategy not in STRATEGIES:
            raise ConfigError(f"{prefix}.strategy={strategy!r}; expected one of {', '.join(STRATEGIES)}")
        t = mixture.get("temperature", 2.0)
        if not (_nonneg(t) and t > 0):
            raise ConfigError(f"{prefix}.temperature={t!r}; expected a number > 0 (1 = proportional to size)")
        weights = dict(mixture.get("weights") or {})
        names = [s.name for s in sources]
        for k, w in weights.items():
            if k not in names:
                raise ConfigError(f"{prefix}.weights.{k}: no such source; expected one of {', '.join(names)}")
            if not _nonneg(w):
                raise ConfigError(f"{prefix}.weights.{k}={w!r}; expected a number >= 0")
        for s in sources:  # a per-source `weight` is the same as an entry of mixture.weights
            if s.weight is not None:
                weights.setdefault(s.name, s.weight)
        if weights and len(weights) != len(sources):
            missing = [n for n in names if n not in weights]
            raise ConfigError(f"{prefix}.weights has no weight for {', '.join(missing)}; expected one per source")
        if weights and not any(weights[n] > 0 for n in names):
            raise ConfigError(f"{prefix}.weights={weights}; expected at least one weight > 0")
        return cls(strategy, float(t), {k: float(v) for k, v in weights.items()})

    def record(self) -> dict:
        return {
            "strategy": self.strategy,
            "temperature": self.temperature,
            "weights": dict(sorted(self.weights.items())),
        }


def allocate(total: int, p: np.ndarray) -> list[int]:
    """`total` batches shared by probabilities `p` (largest remainder; every p > 0 gets at least 1)."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    raw = p * total
    counts = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    counts[(p > 0) & (counts == 0)] = 1
    return [int(c) for c in counts]


def batches_per_source(config: MixtureConfig, names: list[str], batch_counts: list[int], rows: list[int]) -> list[int]:
    """How many batches each source gives per epoch (see the module doc)."""
    if len(names) == 1:
        return list(batch_counts)
    if config.strategy == "round_robin":
        return [min(batch_counts)] * len(names)
    total = sum(batch_counts)
    if config.strategy == "proportional":
        if not config.weights:
            return list(batch_counts)
        return allocate(total, np.array([config.weights[n] for n in names]))
    base = np.array([config.weights[n] for n in names] if config.weights else rows, dtype=np.float64)
    return allocate(total, base ** (1.0 / config.temperature))


class MixtureSchedule:
    """Which source each batch of an epoch comes from, and its position in that source's batch stream.

    `epoch(e)` -> [(source, stream index)]: source s's j-th batch of epoch e is its stream batch
    `e * per_epoch[s] + j` (SourcePlan epoch `stream // K_s`, batch `stream % K_s`).
    """

    def __init__(self, per_epoch: list[int], strategy: str = "proportional", seed: int = 0, shuffle: bool = True):
        self.per_epoch, self.strategy, self.seed, self.shuffle = list(per_epoch), strategy, seed, shuffle

    @property
    def count(self) -> int:
        return sum(self.per_epoch)

    def sources(self, epoch: int) -> np.ndarray:
        """The source of every batch of `epoch` (int array of length `count`)."""
        n = len(self.per_epoch)
        if n == 1:
            return np.zeros(self.per_epoch[0], dtype=np.int64)
        if self.strategy == "round_robin":
            return np.tile(np.arange(n), self.per_epoch[0])
        seq = np.repeat(np.arange(n), self.per_epoch)
        if self.shuffle:
            return np.random.default_rng([int(self.seed), int(epoch), 0x4D4958]).permutation(seq)
        # smooth interleave: batch j of source s sits at (j + 0.5) / n_s of the epoch
        where = np.concatenate([(np.arange(k) + 0.5) / k for k in self.per_epoch if k])
        return seq[np.argsort(where, kind="stable")]

    def epoch(self, epoch: int) -> list[tuple[int, int]]:
        nxt = [epoch * k for k in self.per_epoch]
        out = []
        for s in self.sources(epoch).tolist():
            out.append((s, nxt[s]))
            nxt[s] += 1
        return out


class MixtureSet:
    """A read-only view of several TrainSets as one (what `EmbeddingDataModule.load()` returns for a mixture).

    `columns`/`kinds`: the longest prefix all sources share (a loss fits every source iff it fits this);
    `labels`: None unless every source has labels. Rows are numbered source by source.
    """

    def __init__(self, names: list[str], sets: list[Any]) -> None:
        self.names, self.sets = names, sets
        cols = [tuple(s.columns) for s in sets]
        k = 0
        while all(len(c) > k for c in cols) and len({c[k] for c in cols}) == 1:
            k += 1
        self.columns = cols[0][:k]
        self.kinds = tuple(sets[0].kinds[:k])
        self.offsets = np.cumsum([0] + [len(s) for s in sets])
        self.labels = None
        if all(s.labels is not None for s in sets):
            self.labels = [x for s in sets for x in s.labels]
        self.query_ids = self.corpus = self.qrels = None
        self.info = {"sources": {n: len(s) for n, s in zip(names, sets)}}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return s, i - int(self.offsets[s])

    def get(self, i: int) -> tuple[str, ...]:
        s, j = self.locate(i)
        return self.sets[s].get(j)


BATCH_SAMPLERS = ("auto", "no_duplicates", "random")


def check_mixture_data(prefix: str, data: dict, check_one) -> bool:
    """Config-time checks of `data.batch_sampler`, and of a mixture's sources and `data.mixture`.

    `check_one(prefix, data)` checks a single-source data preset (embedexp.data.config.check_data_config); each
    source is checked as `data` with that source as `train`, and its errors name `{prefix}.train.<source>`.
    Returns True when `data.train` is a mixture (its sources are then checked here), False for one source.
    Raises:
        ConfigError: naming the key, the value and what is expected.
    """
    sampler = data.get("batch_sampler", "auto")
    if sampler not in BATCH_SAMPLERS:
        raise ConfigError(f"{prefix}.batch_sampler={sampler!r}; expected one of {', '.join(BATCH_SAMPLERS)}")
    train = data.get("train")
    if not is_mixture(train):
        if data.get("mixture"):
            MixtureConfig.parse(f"{prefix}.mixture", data.get("mixture"), split_sources(f"{prefix}.train", train))
        return False
    sources = split_sources(f"{prefix}.train", train)
    MixtureConfig.parse(f"{prefix}.mixture", data.get("mixture"), sources)
    if len(sources) > 1 and data.get("dev_fraction"):
        raise ConfigError(
            f"{prefix}.dev_fraction={data.get('dev_fraction')} with {len(sources)} training sources; expected 0 "
            "for a mixture (give an eval set instead)"
        )
    for source in sources:
        one = {k: v for k, v in data.items() if k != "mixture"}
        one["train"] = source.spec
        try:
            check_one(prefix, one)
        except ConfigError as e:
            msg = str(e).replace(f"{prefix}.train", f"{prefix}.train.{source.name}")
            raise ConfigError(msg) from None
    return True
