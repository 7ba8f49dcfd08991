"""IR and STS metrics, vectorised. Definitions follow trec_eval (as used by pytrec_eval and MTEB):

- nDCG@k: gains are the qrels grades (linear), discount 1/log2(rank + 1); ideal from the qrels.
- Recall@k: relevant (grade > 0) documents in the top k / all relevant documents of the query.
- MRR@k: 1 / rank of the first relevant document within the top k, else 0.
- MAP@k: sum over relevant documents in the top k of precision at their rank, / all relevant documents.
Queries come from the qrels; a document whose id equals the query id is never retrieved.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def top_k(
    query_emb: torch.Tensor,
    doc_emb: torch.Tensor,
    k: int,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k: (scores, indices), each (n_queries, k), by chunked matrix products."""
    q = F.normalize(query_emb.float(), dim=-1)
    d = F.normalize(doc_emb.float(), dim=-1)
    k = min(k, d.shape[0])
    scores, idx = [], []
    for s in range(0, q.shape[0], chunk_size):
        sim = q[s : s + chunk_size] @ d.T
        v, i = sim.topk(k, dim=1)
        scores.append(v)
        idx.append(i)
    return torch.cat(scores), torch.cat(idx)


def retrieve(
    query_ids: Sequence[str],
    query_emb: torch.Tensor,
    doc_ids: Sequence[str],
    doc_emb: torch.Tensor,
    k: int,
    ignore_identical_ids: bool = True,
) -> dict[str, list[tuple[str, float]]]:
    """Ranked (doc_id, score) lists per query, identical query/document ids removed."""
    extra = 1 if ignore_identical_ids and set(query_ids) & set(doc_ids) else 0
    scores, idx = top_k(query_emb, doc_emb, k + extra)
    run: dict[str, list[tuple[str, float]]] = {}
    for qi, qid in enumerate(query_ids):
        ranked = [(doc_ids[j], float(s)) for j, s in zip(idx[qi].tolist(), scores[qi].tolist())]
        if extra:
            ranked = [(d, s) for d, s in ranked if d != qid]
        run[qid] = ranked[:k]
    return run


def ir_metrics(
    run: dict[str, list[tuple[str, float]]],
    qrels: dict[str, dict[str, int]],
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (10, 100),
    mrr_at: Sequence[int] = (10,),
    map_at: Sequence[int] = (10,),
) -> dict[str, float]:
    """Mean metrics over the queries in qrels (run lists must be sorted by descending score)."""
    per_query: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        per_query.setdefault(name, []).append(value)

    for qid, judged in qrels.items():
        ranked = [d for d, _ in run.get(qid, [])]
        grades = np.array([max(judged.get(d, 0), 0) for d in ranked], dtype=np.float64)
        relevant = grades > 0
        n_rel = sum(1 for g in judged.values() if g > 0)
        ideal = np.sort(np.array([g for g in judged.values() if g > 0], dtype=np.float64))[::-1]
        discounts = 1.0 / np.log2(np.arange(2, len(grades) + 2))
        for k in ndcg_at:
            idcg = float((ideal[:k] / np.log2(np.arange(2, min(k, len(ideal)) + 2))).sum())
            dcg = float((grades[:k] * discounts[:k]).sum())
            add(f"ndcg@{k}", dcg / idcg if idcg > 0 else 0.0)
        for k in recall_at:
            add(f"recall@{k}", float(relevant[:k].sum()) / n_rel if n_rel else 0.0)
        for k in mrr_at:
            hits = np.flatnonzero(relevant[:k])
            add(f"mrr@{k}", 1.0 / (hits[0] + 1) if hits.size else 0.0)
        for k in map_at:
            hits = np.flatnonzero(relevant[:k])
            precisions = np.arange(1, hits.size + 1) / (hits + 1)
            add(f"map@{k}", float(precisions.sum()) / n_rel if n_rel else 0.0)
    return {name: float(np.mean(values)) for name, values in per_query.items()}


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    return (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho = Pearson correlation of average ranks."""
    rx, ry = _average_ranks(np.asarray(x, dtype=np.float64)), _average_ranks(np.asarray(y, dtype=np.float64))
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")
