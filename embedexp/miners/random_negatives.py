"""Random negatives: the simplest miner, and the baseline the hard-negative miners must beat.

What "retrieved" means here: there is no scorer, so every document of the corpus is a candidate, once per
distinct text (documents with the same text under different ids are one candidate). The rule the hard miners
follow holds: each row's negatives are distinct texts of the corpus, none is the row's positive text, the text
of a graded positive (grade > 0) of the query, or the anchor's own text. A row whose query has fewer than
`n_negatives` such texts is short: dropped (on_short=drop, counted in the statistics) or the run fails
(on_short=fail).
"""

from __future__ import annotations

import logging
import random

from embedexp.data.retrieval_view import with_retrieval_ids
from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError
from embedexp.miners.base import ON_SHORT, check_choice, check_int

log = logging.getLogger("embedexp.miners")

FILTERS = ("duplicate_text", "known_positives", "anchor_text")


class RandomNegativeMiner:
    """Adds `n_negatives` document columns per row: a seeded uniform sample, without replacement, of the
    corpus' distinct texts that are not a positive of the row's query (by id or text) and not the anchor's text.
    Deterministic for a seed. `mine(...).info["mining"]` holds the statistics (rows short, what each rule
    removed, per row, out of the corpus' documents)."""

    needs_encoder = False  # mine() is called without the model being trained

    def __init__(self, n_negatives: int = 1, seed: int = 0, name: str = "random", on_short: str = "drop") -> None:
        self.n_negatives = check_int("miner.n_negatives", n_negatives, 1)
        self.seed = check_int("miner.seed", seed, 0)
        self.on_short = check_choice("miner.on_short", on_short, ON_SHORT)
        self.name = name

    def mine(self, train_set: TrainSet, encoder=None) -> TrainSet:
        """-> a TrainSet with columns anchor, positive, negative_1..negative_n (short rows dropped).

        Raises ConfigError for data without corpus/qrels, for on_short=fail with a short row, and when no
        row gets n_negatives negatives.
        """
        train_set = with_retrieval_ids(train_set)  # pairs/table rows: corpus = their texts, as ST's miner
        if train_set.corpus is None or train_set.query_ids is None or train_set.qrels is None:
            raise ConfigError(
                f"miner={self.name} needs retrieval data: a BEIR folder or (anchor, positive[, negatives]) rows; "
                f"this data has columns {train_set.columns}"
            )
        rng = random.Random(self.seed)
        corpus = train_set.corpus
        pool: list[str] = list(dict.fromkeys(corpus.values()))  # distinct texts, in corpus order
        texts = set(pool)
        n = self.n_negatives
        removed = {f: 0 for f in FILTERS}
        rows, keep, short_queries = [], [], set()
        for r, (qid, row) in enumerate(zip(train_set.query_ids, train_set.rows)):
            positives = {corpus[d] for d, g in train_set.qrels.get(qid, {}).items() if g > 0 and d in corpus}
            positives.add(row[1])
            bad = positives & texts
            anchor = {row[0]} & texts - bad
            removed["duplicate_text"] += len(corpus) - len(pool)
            removed["known_positives"] += len(bad)
            removed["anchor_text"] += len(anchor)
            bad |= anchor
            left = len(pool) - len(bad)
            if left < n:
                short_queries.add(qid)
                continue
            if left < 4 * n or len(bad) > len(pool) // 2:  # few texts left: sample them directly
                negatives = rng.sample([t for t in pool if t not in bad], n)
            else:  # rejection sampling: expected < 2 draws per negative
                negatives, seen = [], set(bad)
                while len(negatives) < n:
                    t = pool[rng.randrange(len(pool))]
                    if t not in seen:
                        seen.add(t)
                        negatives.append(t)
            rows.append(row[:2] + tuple(negatives))
            keep.append(r)
        n_rows, short = len(train_set.rows), len(train_set.rows) - len(keep)
        stats = {
            "miner": self.name,
            "rule": "uniform over the corpus' distinct texts, without positives' and the anchor's texts",
            "seed": self.seed,
            "queries": len(set(train_set.query_ids)),
            "rows_in": n_rows,
            "rows_out": len(keep),
            "candidates": n_rows * len(corpus),
            "removed": removed,
            "rows_short": short,
            "queries_short": len(short_queries),
            "rows_dropped": short,
            "cache": "off",  # nothing to cache: sampling is cheap
        }
        removed_txt = ", ".join(f"{k}={v}" for k, v in removed.items())
        log.info(
            "miner=%s: %d rows (%d queries) had fewer than %d distinct non-positive texts%s",
            self.name,
            short,
            len(short_queries),
            n,
            " and were dropped" if short else "",
        )
        if short and self.on_short == "fail":
            raise ConfigError(
                f"miner.on_short=fail: {short} of {n_rows} rows ({len(short_queries)} queries) have fewer than "
                f"miner.n_negatives={n} distinct corpus texts that are not a positive or the anchor "
                f"(removed: {removed_txt}); lower miner.n_negatives or set miner.on_short=drop"
            )
        if not keep:
            raise ConfigError(
                f"miner={self.name}: no row got miner.n_negatives={n} negatives: the corpus has {len(pool)} distinct "
                f"texts (removed: {removed_txt}); lower miner.n_negatives"
            )
        return TrainSet(
            train_set.columns[:2] + tuple(f"negative_{i + 1}" for i in range(n)),
            train_set.kinds[:2] + ("document",) * n,
            rows,
            labels=[train_set.labels[r] for r in keep] if train_set.labels is not None else None,
            info={**train_set.info, "miner": self.name, "mining": stats},
            query_ids=[train_set.query_ids[r] for r in keep],
            corpus=train_set.corpus,
            qrels=train_set.qrels,
        )
