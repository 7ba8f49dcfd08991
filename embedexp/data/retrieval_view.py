"""Any (anchor, positive[, negatives]) training set as retrieval data a miner can use.

As sentence-transformers' `mine_hard_negatives` does for a pairs dataset: the corpus is every distinct
positive and negative text (ids `d0, d1, ...` in first-seen order), each distinct anchor text is one query
(ids `q0, q1, ...`), and the qrels say each query is relevant (grade 1) to every positive it has in any row
(all of a table row's positives, not one epoch's draw).
The rows become (anchor, positive) with one row per (anchor, positive) pair in data order; the data's own
negatives are corpus documents the miner may pick again, never positives of the same anchor.
"""

from __future__ import annotations

from embedexp.data.train_sets import TrainSet


def with_retrieval_ids(ts: TrainSet) -> TrainSet:
    """`ts` itself when it has query ids, a corpus and qrels (BEIR) or is not (anchor, positive, ...) shaped
    (labelled pairs, STS, sentences: the miner then refuses it); else the view described above."""
    if ts.corpus is not None and ts.query_ids is not None and ts.qrels is not None:
        return ts
    if ts.columns[:2] != ("anchor", "positive") or ts.labels is not None or ts.transform is not None:
        return ts
    doc_id: dict[str, str] = {}
    query_id: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    rows: list[tuple[str, str]] = []
    qids: list[str] = []
    if hasattr(ts.rows, "groups"):  # table rows: every positive and negative of a row, not this epoch's draw
        groups = ts.rows.groups()
    else:
        groups = ((row[0], [row[1]], list(row[2:])) for row in (ts.get(i) for i in range(len(ts))))
    for anchor, positives, negatives in groups:
        for text in (*positives, *negatives):
            doc_id.setdefault(text, f"d{len(doc_id)}")
        qid = query_id.setdefault(anchor, f"q{len(query_id)}")
        for pos in positives:
            did = doc_id[pos]
            if did not in qrels.setdefault(qid, {}):
                qrels[qid][did] = 1
                rows.append((anchor, pos))
                qids.append(qid)
    corpus = {d: t for t, d in doc_id.items()}
    return TrainSet(
        ("anchor", "positive"),
        ("query", "document"),
        rows,
        info={**ts.info, "retrieval_view": {"queries": len(query_id), "corpus": len(corpus)}},
        query_ids=qids,
        corpus=corpus,
        qrels=qrels,
    )
