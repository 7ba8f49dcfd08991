"""Random negatives: the simplest miner, and the baseline the hard-negative miners must beat."""

from __future__ import annotations

import random

from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError


class RandomNegativeMiner:
    """Adds `n_negatives` document columns per row: random corpus documents that are not a known
    positive (any grade > 0 in the qrels) of the row's query. Deterministic for a seed."""

    needs_encoder = False  # mine() is called without the model being trained

    def __init__(self, n_negatives: int = 1, seed: int = 0, name: str = "random") -> None:
        if not isinstance(n_negatives, int) or n_negatives < 1:
            raise ConfigError(f"miner.n_negatives={n_negatives!r}; expected a positive integer")
        self.n_negatives = n_negatives
        self.seed = seed
        self.name = name

    def mine(self, train_set: TrainSet, encoder=None) -> TrainSet:
        if train_set.corpus is None or train_set.query_ids is None or train_set.qrels is None:
            raise ConfigError(f"miner={self.name} needs retrieval data with a corpus and qrels (data.train.format=beir)")
        rng = random.Random(self.seed)
        doc_ids = list(train_set.corpus)
        rows = []
        for qid, row in zip(train_set.query_ids, train_set.rows):
            positives = {d for d, g in train_set.qrels.get(qid, {}).items() if g > 0}
            if len(doc_ids) - len(positives) < self.n_negatives:
                raise ConfigError(f"miner.n_negatives={self.n_negatives} exceeds the corpus' non-positive documents")
            negatives: list[str] = []
            while len(negatives) < self.n_negatives:
                d = rng.choice(doc_ids)
                if d not in positives and d not in negatives:
                    negatives.append(d)
            rows.append(row[:2] + tuple(train_set.corpus[d] for d in negatives))
        return TrainSet(
            train_set.columns[:2] + tuple(f"negative_{i + 1}" for i in range(self.n_negatives)),
            train_set.kinds[:2] + ("document",) * self.n_negatives,
            rows,
            labels=train_set.labels,
            info={**train_set.info, "miner": self.name},
            query_ids=train_set.query_ids,
            corpus=train_set.corpus,
            qrels=train_set.qrels,
        )
