"""IR and STS metrics, vectorised. Definitions follow trec_eval (as used by pytrec_eval and MTEB):

- nDCG@k: gains are the qrels grades (linear), discount 1/log2(rank + 1); ideal from the qrels.
- Recall@k: relevant (grade > 0) documents in the top k / all relevant documents of the query.
- MRR@k: 1 / rank of the first relevant document within the top k, else 0.
- MAP@k: sum over relevant documents in the top k of precision at their rank, / all relevant documents.

Ranking (trec_eval's `form_res_rels.c`, `comp_sim_docno`): score descending, then document id
descending (byte order of the id string), so tied documents are ordered the same way here, in
pytrec_eval and in mteb, whatever their place in the corpus file; the same rule decides which tied
documents make the top-k cut. Queries come from the qrels. A document whose id equals the query id is
dropped only with `ignore_identical_ids=True` (a per-eval-set option, off by default as in BEIR/mteb).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def trec_order(ranked: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """(doc_id, score) pairs in trec_eval's order: score descending, then doc id descending.

    The scores are compared exactly as given (Python floats, i.e. the values pytrec_eval receives).
    """
    return sorted(ranked, key=lambda item: (item[1], item[0]), reverse=True)


def _descending_id_rank(doc_ids: Sequence[str]) -> np.ndarray:
    """rank[j] = position of doc_ids[j] when all ids are sorted descending (0 = largest id)."""
    order = sorted(range(len(doc_ids)), key=lambda j: doc_ids[j], reverse=True)
    rank = np.empty(len(doc_ids), dtype=np.int64)
    rank[order] = np.arange(len(doc_ids))
    return rank


SCORE_BLOCK_ELEMENTS = 1 << 22  # float32 similarities per (query chunk x corpus block) tile in `top_k`: 16 MB
ONE_BLOCK_MIN_QUERIES = 64  # the corpus stays one block while a tile still holds this many queries (<= 65,536 docs)
QUERY_CHUNK_MIN = 256  # queries per tile when the corpus is split into blocks
MIN_TILE_ROWS = 4  # a tile's product has at least this many query rows (zero rows pad a smaller chunk)


def top_k(
    query_emb: torch.Tensor,
    doc_emb: torch.Tensor,
    k: int,
    chunk_size: int = 1024,
    doc_ids: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k, one (query chunk x corpus block) tile of similarities at a time (float32, as mteb scores).

    Args:
        query_emb: (n_queries, dim); doc_emb: (n_docs, dim); neither needs to be normalised (each is normalised
            here, the corpus one block at a time: no normalised copy of the whole corpus is made).
        k: documents per query (at most n_docs).
        chunk_size: queries per tile at most. A tile holds at most SCORE_BLOCK_ELEMENTS similarities: a corpus of
            up to SCORE_BLOCK_ELEMENTS / ONE_BLOCK_MIN_QUERIES documents (65,536) is one block, with query chunks
            of SCORE_BLOCK_ELEMENTS / n_docs (SciFact, NFCorpus: one product per query chunk); a larger one is cut
            into blocks of SCORE_BLOCK_ELEMENTS / QUERY_CHUNK_MIN documents, and each tile's top-k is merged into a
            running top-k per query (as mteb's exact search merges corpus chunks); rows with a tie group across
            the cut are then scored a second time. Memory: one tile + one normalised block + O(n_queries * k).
        doc_ids: when given, each row is in trec_eval's order (score descending, then doc id
            descending) and documents tied with the k-th score are chosen by that rule too, so the
            top-k set is the first k of trec_eval's full ranking. Without ids, ties are in no set order.

    Returns:
        (scores, indices), each (n_queries, k): cosine similarities and row indices into doc_emb (on the CPU when
        doc_ids are given, else on query_emb's device).

    Float32 products can differ in the last bit with the shape of the product: on this project's CPUs (MKL), a
    product with 1-3 query rows took another kernel than one with 4 or more, whose bits did not depend on the
    number of rows or on a document's column, so two identical documents scored differently for a query alone in
    its chunk. Query chunks are therefore of balanced sizes, and a chunk under MIN_TILE_ROWS rows is padded with
    zero rows.

    Raises:
        ValueError: doc_ids and doc_emb differ in length.
    """
    q = F.normalize(query_emb.float(), dim=-1)
    n_q, n_docs = q.shape[0], doc_emb.shape[0]
    k = min(k, n_docs)
    id_rank = _descending_id_rank(doc_ids) if doc_ids is not None else None
    if id_rank is not None and len(id_rank) != n_docs:
        raise ValueError(f"top_k: {len(id_rank)} doc_ids for {n_docs} document embeddings")
    if k <= 0 or n_q == 0:
        return torch.empty((n_q, max(k, 0))), torch.empty((n_q, max(k, 0)), dtype=torch.long)
    # with ids, one score more than k tells whether a tie group straddles the cut (see _trec_order_rows)
    kk = k + (1 if id_rank is not None and k < n_docs else 0)
    per_tile = SCORE_BLOCK_ELEMENTS // n_docs  # queries per tile with the whole corpus in one block
    chunk = max(1, min(chunk_size, n_q, per_tile if per_tile >= ONE_BLOCK_MIN_QUERIES else QUERY_CHUNK_MIN))
    chunks = _balanced_chunks(n_q, chunk)
    block = max(kk, SCORE_BLOCK_ELEMENTS // max(b - a for a, b in chunks))
    best_v = torch.empty((n_q, kk), device=q.device)
    best_i = torch.empty((n_q, kk), dtype=torch.long, device=q.device)
    one_block = block >= n_docs
    resolved: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for lo, d in _corpus_blocks(doc_emb, block, q.device):
        for a, b in chunks:
            sim = _tile(q[a:b], d)
            v, i = sim.topk(min(kk, sim.shape[1]), dim=1)
            if kk > k and one_block:  # a crowded row's ties are all in this tile: resolved here, no second pass
                for r in torch.nonzero(v[:, k] == v[:, k - 1]).flatten().tolist():
                    c_idx, c_score, n_hit = _best_k_by_id(sim[r], v[r, k - 1], 0, k, id_rank, _EMPTY)
                    if n_hit > k:  # else no tie group across the cut (e.g. NaN scores, which no >= counts)
                        resolved[a + r] = (c_idx, c_score)
            del sim  # else this tile is still alive while the next product is computed: 2 tiles
            if lo == 0:
                best_v[a:b], best_i[a:b] = v, i
                continue
            cv, ci = torch.cat([best_v[a:b], v], 1), torch.cat([best_i[a:b], i + lo], 1)
            v, pick = cv.topk(kk, dim=1)
            best_v[a:b], best_i[a:b] = v, ci.gather(1, pick)
    if id_rank is None:
        return best_v, best_i
    return _trec_order_rows(q, doc_emb, best_v, best_i, k, id_rank, chunks, block, resolved if one_block else None)


def _balanced_chunks(n: int, most: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering range(n), at most `most` long, of sizes that differ by at most one."""
    parts = -(-n // most)
    bounds = [n * p // parts for p in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _corpus_blocks(doc_emb: torch.Tensor, block: int, device: torch.device):
    """(first row, normalised float32 rows [first, first + block)) for each corpus block: both passes of `top_k`
    normalise the same blocks the same way, so their scores have the same bits."""
    for lo in range(0, doc_emb.shape[0], block):
        yield lo, F.normalize(doc_emb[lo : lo + block].float(), dim=-1).to(device)


def _tile(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(len(q), len(d)) = q @ d.T with at least MIN_TILE_ROWS rows in the product (see `top_k`)."""
    if q.shape[0] >= MIN_TILE_ROWS:
        return q @ d.T
    pad = q.new_zeros((MIN_TILE_ROWS - q.shape[0], q.shape[1]))
    return (torch.cat([q, pad]) @ d.T)[: q.shape[0]]


_EMPTY = (np.empty(0, np.int64), np.empty(0, np.float32))


def _best_k_by_id(
    row: torch.Tensor, kth: torch.Tensor, lo: int, k: int, id_rank: np.ndarray, best: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Merge the documents of one tile row reaching the k-th score `kth` into `best` (indices, scores), keeping the
    first k by (score descending, id descending); also returns how many documents of the row reached `kth`.

    row: (block,) scores of the documents lo, lo + 1, ...; best: (<= k,) from the previous blocks.
    """
    hit = torch.nonzero(row >= kth).flatten()
    c_idx = np.concatenate([best[0], (hit + lo).cpu().numpy()])
    c_score = np.concatenate([best[1], row[hit].cpu().numpy()])
    keep = np.lexsort((id_rank[c_idx], -c_score))[:k]
    return c_idx[keep], c_score[keep], len(hit)


def _trec_order_rows(
    q: torch.Tensor,
    doc_emb: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    k: int,
    id_rank: np.ndarray,
    chunks: list[tuple[int, int]],
    block: int,
    resolved: dict[int, tuple[np.ndarray, np.ndarray]] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-select the running top (v, i) by trec_eval's rule: ties at the cut, then order within the k.

    q: (n_queries, dim) normalised; v, i: (n_queries, k + 1) the largest scores of each row (k when k == n_docs);
    returns k columns. A row is crowded when more than k documents reach its k-th score (a tie group straddles the
    cut). That can only happen where the (k+1)-th largest score equals the k-th. With one corpus block such rows
    were already resolved from their tile (`resolved`: row -> (indices, scores); None with several blocks);
    otherwise the query chunks holding them are scored again, tile by tile with the same shapes as the first pass
    (the same float32 bits), and each crowded row keeps a running best k over the blocks: memory O(k + one block)
    per row, whatever the size of the tie group.
    """
    v_np, i_np = v[:, :k].cpu().numpy().copy(), i[:, :k].cpu().numpy().copy()
    crowded = torch.nonzero(v[:, k] == v[:, k - 1]).flatten().tolist() if v.shape[1] > k else []
    if resolved is not None:
        for r, (c_idx, c_score) in resolved.items():
            i_np[r], v_np[r] = c_idx, c_score
        crowded = []
    for a, b in chunks:
        rows = [r for r in crowded if a <= r < b]
        if not rows:
            continue
        best = dict.fromkeys(rows, _EMPTY)
        reached = dict.fromkeys(rows, 0)  # documents reaching the row's k-th score
        for lo, d in _corpus_blocks(doc_emb, block, q.device):
            sim = _tile(q[a:b], d)
            for r in rows:
                c_idx, c_score, n_hit = _best_k_by_id(sim[r - a], v[r, k - 1], lo, k, id_rank, best[r])
                best[r], reached[r] = (c_idx, c_score), reached[r] + n_hit
            del sim
        for r in rows:
            if reached[r] > k:  # else no tie group across the cut (e.g. NaN scores, which no >= comparison counts)
                i_np[r], v_np[r] = best[r]
    order = np.lexsort((id_rank[i_np], -v_np), axis=-1)  # score descending, then id descending
    return torch.from_numpy(np.take_along_axis(v_np, order, 1)), torch.from_numpy(np.take_along_axis(i_np, order, 1))


def retrieve(
    query_ids: Sequence[str],
    query_emb: torch.Tensor,
    doc_ids: Sequence[str],
    doc_emb: torch.Tensor,
    k: int,
    ignore_identical_ids: bool = False,
) -> dict[str, list[tuple[str, float]]]:
    """Top-k (doc_id, score) lists per query, in trec_eval's order (see `top_k` with doc_ids).

    Args:
        query_emb: (n_queries, dim), row i is query_ids[i]; doc_emb: (n_docs, dim), row j is doc_ids[j].
        k: documents per query.
        ignore_identical_ids: drop the document whose id equals the query id (ArguAna-style sets where a
            query is also a corpus document); off by default, as in BEIR and mteb.

    Returns:
        {query_id: [(doc_id, cosine score), ...]} with the first k of trec_eval's full ranking (after
        the identical id is dropped, when asked).
    """
    extra = 1 if ignore_identical_ids and set(query_ids) & set(doc_ids) else 0
    scores, idx = top_k(query_emb, doc_emb, k + extra, doc_ids=doc_ids)
    run: dict[str, list[tuple[str, float]]] = {}
    for qi, qid in enumerate(query_ids):
        ranked = [(doc_ids[j], float(s)) for j, s in zip(idx[qi].tolist(), scores[qi].tolist())]
        if extra:
            ranked = [(d, s) for d, s in ranked if d != qid]
        run[qid] = ranked[:k]
    return run


def identical_id_judgements(qrels: dict[str, dict[str, int]]) -> list[str]:
    """Query ids whose qrels judge relevant (grade > 0) the document with the same id.

    These are the judgements `ignore_identical_ids=True` throws away: the query can never score them.
    """
    return [qid for qid, judged in qrels.items() if judged.get(qid, 0) > 0]


def ir_metrics(
    run: dict[str, list[tuple[str, float]]],
    qrels: dict[str, dict[str, int]],
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (10, 100),
    mrr_at: Sequence[int] = (10,),
    map_at: Sequence[int] = (10,),
) -> dict[str, float]:
    """Mean per-query metrics over the queries in qrels: `{"ndcg@10": value, ...}` in [0, 1] (see `ir_metrics_per_query`)."""
    _, per_query = ir_metrics_per_query(run, qrels, ndcg_at, recall_at, mrr_at, map_at)
    return {name: float(np.mean(values)) for name, values in per_query.items()}


def ir_metrics_per_query(
    run: dict[str, list[tuple[str, float]]],
    qrels: dict[str, dict[str, int]],
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (10, 100),
    mrr_at: Sequence[int] = (10,),
    map_at: Sequence[int] = (10,),
) -> tuple[list[str], dict[str, list[float]]]:
    """Per-query metrics: (query ids in qrels order, {"ndcg@10": [value per query], ...}), each value in [0, 1].

    Each run list is ranked here by trec_eval's rule (score descending, then doc id descending), so it
    may come in any order (a reranker's, corpus order, ...). A query missing from the run counts as 0;
    run queries absent from qrels are ignored. Reference: pytrec_eval `ndcg_cut`, `recall`,
    `recip_rank` (cut at k), `map_cut`.
    """
    per_query: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        per_query.setdefault(name, []).append(value)

    query_ids = list(qrels)
    for qid, judged in qrels.items():
        ranked = [d for d, _ in trec_order(run.get(qid, []))]
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
    return query_ids, per_query


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
    """Pearson's r of two equal-length sequences; NaN when either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")
