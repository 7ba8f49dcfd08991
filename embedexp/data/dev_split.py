"""A held-out dev split of the training data, by query: no query (anchor text) is in both parts.

The dev rows become a retrieval eval set (see `embedexp.eval.sets.pairs_retrieval_set`) whose corpus is
every positive and negative text of the whole training data, so the model is selected on queries it never
trained on, against the same distractors it will meet.
"""

from __future__ import annotations

import random
from dataclasses import replace

from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError


def split_by_query(ts: TrainSet, fraction: float, seed: int) -> tuple[TrainSet, list[tuple[str, ...]]]:
    """(training set without the dev queries, dev rows). `fraction` of the distinct anchors (at least one) go to dev.

    The draw is seeded (`random.Random(seed)`), so the same seed and data give the same split. A retrieval-shaped
    set keeps its ids aligned (query_ids, qrels of the remaining queries) for the miners.
    Raises:
        ConfigError: the data has no (anchor, positive) columns, or fewer than two distinct anchors.
    """
    if ts.columns[:2] != ("anchor", "positive") or ts.labels is not None:
        raise ConfigError(
            f"data.dev_fraction={fraction}: a dev split needs (anchor, positive) rows; this data has "
            f"columns {ts.columns}; expected data.dev_fraction=0 or an explicit eval set"
        )
    anchors = list(dict.fromkeys(row[0] for row in ts.rows))  # one pass (lazy for table-backed rows)
    if len(anchors) < 2:
        raise ConfigError(
            f"data.dev_fraction={fraction}: the training data has {len(anchors)} distinct query; "
            "expected at least 2 to hold one out"
        )
    n_dev = min(len(anchors) - 1, max(1, round(fraction * len(anchors))))
    dev = set(random.Random(seed).sample(anchors, n_dev))
    keep = [i for i, row in enumerate(ts.rows) if row[0] not in dev]
    dev_rows = [row for row in ts.rows if row[0] in dev]
    query_ids = [ts.query_ids[i] for i in keep] if ts.query_ids is not None else None
    qrels = (
        {q: d for q, d in ts.qrels.items() if q in set(query_ids)} if ts.qrels is not None and query_ids else ts.qrels
    )
    info = {
        **ts.info,
        "dev_split": {"fraction": fraction, "seed": seed, "dev_queries": n_dev, "dev_rows": len(dev_rows)},
    }
    rows = ts.rows.take(keep) if hasattr(ts.rows, "take") else [ts.rows[i] for i in keep]  # table rows stay lazy
    return replace(ts, rows=rows, query_ids=query_ids, qrels=qrels, info=info), dev_rows
