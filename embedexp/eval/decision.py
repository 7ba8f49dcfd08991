"""The bi-encoder vs cross-encoder decision table, measured on the user's own eval set (`eval.decision`).

The field guide's rule of thumb (cross-encoders more accurate, bi-encoders far faster, a two-stage pipeline in
between) as numbers on the data at hand. For every retrieval eval set, one row per pipeline, in this order:

    BM25                               (eval.decision.bm25: true; rank_bm25's Okapi via the miners' `fast` index)
    BM25 + <reranker>                  for each cross-encoder in eval.decision.reranker
    bi-encoder base                    (the `model` group)
    bi-encoder base + <reranker>
    bi-encoder tuned                   (when `tuned=` is given)
    bi-encoder tuned + <reranker>

Quality (every query of the set): nDCG@10 and Recall@100 of the row's final ranking by trec_eval's definitions
(`embedexp.eval.metrics.ir_metrics_per_query`). A first stage retrieves depth = max(100, top_k) documents per
query (a bi-encoder exactly as `embedexp.eval.metrics.retrieve`, so its row equals the run's own metrics; BM25
retrieves only documents with a score > 0, as Lucene does). A reranked row re-orders the first stage's top_k by
cross-encoder score (`embedexp.eval.rerank.Reranker`, so with top_k >= 10 its nDCG@10 equals `eval.rerank`'s)
and keeps the first stage's remaining documents below them, in their order; with top_k >= 100 its Recall@100
is therefore its first stage's.

Significance ("vs"): each row is compared with the row it is built from: a reranked row with its own first
stage, bi-encoder base with BM25, bi-encoder tuned with bi-encoder base. Paired over the set's queries on
nDCG@10 (`embedexp.eval.stats.compare_paired`: bootstrap CI of the change, randomisation p-value), Holm's
correction over the table's comparisons and a verdict (`embedexp.eval.stats.verdicts`).

Latency (ms/query): online cost of answering queries, on the first `max_queries_for_latency` queries, for
each query batch size b in `batch_sizes`: queries are taken b at a time; per batch the wall time of encoding
the queries + searching the prebuilt corpus index (faiss IndexFlatIP over normalised embeddings, top depth; for
BM25: tokenising + scoring the posting index + top depth), plus, for a reranked row, the cross-encoder scoring
of the batch's top_k (query, document) pairs in mini-batches of `rerank_batch_size` pairs. One batch is run
first, untimed (lazy loads, first-call allocations). ms/query = total / queries. The CPU time of the process
(all threads) is kept beside it in results.json; under machine load wall time is inflated, CPU time much less.
Offline cost (corpus encoding, BM25 indexing) is reported separately, once, in seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from embedexp.errors import ConfigError, ModelError
from embedexp.eval.metrics import ir_metrics_per_query, retrieve
from embedexp.eval.sets import RetrievalSet

Run = dict[str, list[tuple[str, float]]]  # {query id: [(doc id, score), ...]}
NDCG, RECALL = "ndcg@10", "recall@100"
DEFAULTS = {
    "enabled": None,
    "reranker": None,
    "top_k": 100,
    "batch_sizes": [1, 32],
    "max_queries_for_latency": 50,
    "bm25": True,
    "rerank_batch_size": 32,
    "max_length": 256,
}


def rerankers_of(value: Any) -> list[str]:
    """`eval.decision.reranker` (null, one folder or a list of folders) as a list of folders."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


# ---------------------------------------------------------------- first stages
class BM25Stage:
    """BM25 Okapi (rank_bm25's scores, the miners' `fast` posting index) with the miners' default tokenizer."""

    label = "BM25"

    def __init__(self, s: RetrievalSet) -> None:
        from embedexp.miners.bm25 import BM25Index
        from embedexp.miners.tokenize import Tokenizer

        self.s = s
        self.tokenizer = Tokenizer(key="eval.decision")
        t0 = time.perf_counter()
        self.index = BM25Index(self.tokenizer.many(s.docs))
        self.offline_seconds = time.perf_counter() - t0
        self.offline_what = f"BM25 index of {len(s.docs)} documents"

    def search(self, query_ids: list[str], queries: list[str], depth: int) -> Run:
        """Top `depth` documents with a score > 0 per query, score descending (ties: corpus order)."""
        from embedexp.miners.base import topk_desc

        drop = self.s.ignore_identical_ids
        scores = self.index.score_block([self.index.token_ids(self.tokenizer(q)) for q in queries])
        idx, top = topk_desc(scores, depth + int(drop))
        run = {}
        for qid, rows, vals in zip(query_ids, idx.tolist(), top.tolist()):
            ranked = [(self.s.doc_ids[j], v) for j, v in zip(rows, vals) if v > 0]
            run[qid] = [(d, v) for d, v in ranked if not (drop and d == qid)][:depth]
        return run

    def run_all(self, depth: int, batch_size: int) -> Run:
        s = self.s
        out: Run = {}
        for i in range(0, len(s.query_ids), 256):
            out.update(self.search(s.query_ids[i : i + 256], s.queries[i : i + 256], depth))
        return out


class DenseStage:
    """A bi-encoder over the set's corpus, encoded once (the offline cost) into a faiss IndexFlatIP."""

    def __init__(
        self, label: str, encoder, s: RetrievalSet, batch_size: int, show_progress: bool = False, doc_emb=None
    ) -> None:
        """`doc_emb` (n_docs, dim): the corpus already encoded by this encoder (offline cost then not timed)."""
        import torch
        import torch.nn.functional as F

        self.label, self.encoder, self.s = label, encoder, s
        self.offline_what = f"{label}: encoding {len(s.docs)} documents"
        self.offline_seconds = None
        if doc_emb is None:
            t0 = time.perf_counter()
            doc_emb = encoder.encode(s.docs, "document", batch_size, show_progress, desc=f"{s.name}: corpus")
            self.offline_seconds = time.perf_counter() - t0
        elif tuple(doc_emb.shape)[0] != len(s.docs):
            raise ValueError(f"{label}: {tuple(doc_emb.shape)[0]} precomputed embeddings for {len(s.docs)} documents")
        self.doc_emb = torch.as_tensor(doc_emb, dtype=torch.float32)
        self.index = _flat_ip(F.normalize(self.doc_emb.float(), dim=-1).numpy())

    def search(self, query_ids: list[str], queries: list[str], depth: int) -> Run:
        """Encode the queries (one batch) and search the prebuilt index: the online path."""
        import torch.nn.functional as F

        drop = self.s.ignore_identical_ids
        q = self.encoder.encode(queries, "query", len(queries))
        scores, rows = self.index.search(F.normalize(q.float(), dim=-1).numpy(), depth + int(drop))
        run = {}
        for qid, srow, rrow in zip(query_ids, scores.tolist(), rows.tolist()):
            ranked = [(self.s.doc_ids[r], s) for s, r in zip(srow, rrow) if r >= 0]
            run[qid] = [(d, s) for d, s in ranked if not (drop and d == qid)][:depth]
        return run

    def run_all(self, depth: int, batch_size: int) -> Run:
        """Every query, exactly as the run's own metrics rank them (`retrieve`: exact cosine, trec_eval ties)."""
        s = self.s
        q = self.encoder.encode(s.queries, "query", batch_size)
        return retrieve(s.query_ids, q, s.doc_ids, self.doc_emb, depth, ignore_identical_ids=s.ignore_identical_ids)


def _flat_ip(emb: np.ndarray):
    """A faiss IndexFlatIP over (n, dim) float32 rows: exact inner-product search (cosine on normalised rows)."""
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    return index


# ---------------------------------------------------------------- second stage
def _load_rerankers(paths: list[str], top_k: int, batch_size: int, max_length: int) -> list[tuple[str, Any]]:
    """(row label, loaded Reranker) per folder; load errors name eval.decision.reranker."""
    from embedexp.eval.rerank import Reranker

    names = [Path(p).name or str(p) for p in paths]
    out = []
    for i, p in enumerate(paths):
        label = "reranker" if len(paths) == 1 else f"reranker {names[i]}"
        if names.count(names[i]) > 1:
            label += f" #{i + 1}"
        try:
            r = Reranker(p, top_k=top_k, batch_size=batch_size, max_length=max_length)
            r.scorer()  # load now: a broken folder fails before any timing
        except (ConfigError, ModelError) as e:
            raise type(e)(str(e).replace("eval.rerank.model", "eval.decision.reranker")) from None
        out.append((label, r))
    return out


def with_tail(reranked: Run, first: Run) -> Run:
    """Each query's reranked top_k (cross-encoder scores), then the first stage's other documents below them.

    The tail keeps the first stage's order (scores below the lowest cross-encoder score, strictly decreasing), so
    ranks beyond top_k are the first stage's, as in a deployed two-stage pipeline.
    """
    out: Run = {}
    for q, ranked in first.items():
        head = list(reranked.get(q, []))
        seen = {d for d, _ in head}
        floor = min((s for _, s in head), default=0.0)
        out[q] = head + [(d, floor - 1.0 - i) for i, d in enumerate(d for d, _ in ranked if d not in seen)]
    return out


# ---------------------------------------------------------------- latency
def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds: all threads)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def measure_latency(
    stage, rerankers: list[tuple[str, Any]], depth: int, batch_size: int, n_queries: int
) -> dict[str | None, tuple[float, float]]:
    """{None (first stage alone) | reranker label: (wall ms/query, CPU ms/query)} over the first n_queries.

    Queries go `batch_size` at a time through stage.search (encode + index search) and then each reranker
    (cross-encoder over the batch's top_k pairs); a reranked row's time is its first stage's plus its own, on the
    same batches. The first batch is run once untimed beforehand (warm-up).
    """
    s = stage.s
    qids, texts = s.query_ids[:n_queries], s.queries[:n_queries]
    q_text, d_text = dict(zip(s.query_ids, s.queries)), dict(zip(s.doc_ids, s.docs))
    batches = [(qids[i : i + batch_size], texts[i : i + batch_size]) for i in range(0, len(qids), batch_size)]
    warm = stage.search(*batches[0], depth)
    for _, r in rerankers:
        r.rerank(warm, q_text, d_text)
    totals = {key: [0.0, 0.0] for key in [None] + [label for label, _ in rerankers]}
    for ids, qs in batches:
        run, wall, cpu = _timed(lambda ids=ids, qs=qs: stage.search(ids, qs, depth))
        totals[None][0] += wall
        totals[None][1] += cpu
        for label, r in rerankers:
            _, w2, c2 = _timed(lambda r=r, run=run: r.rerank(run, q_text, d_text))
            totals[label][0] += wall + w2
            totals[label][1] += cpu + c2
    n = max(len(qids), 1)
    return {key: (1000.0 * w / n, 1000.0 * c / n) for key, (w, c) in totals.items()}


# ---------------------------------------------------------------- the table
@dataclass
class DecisionRow:
    """One pipeline of the table; `per_query` are its nDCG@10 values in the set's qrels order."""

    name: str
    first_stage: str
    reranker: str | None
    vs: str | None
    ndcg: float
    recall: float
    per_query: list[float]
    ms_per_query: dict[int, float] = field(default_factory=dict)
    cpu_ms_per_query: dict[int, float] = field(default_factory=dict)
    comparison: dict | None = None
    run: Run = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "first_stage": self.first_stage,
            "reranker": self.reranker,
            "vs": self.vs,
            NDCG: self.ndcg,
            RECALL: self.recall,
            "ms_per_query": {str(b): v for b, v in self.ms_per_query.items()},
            "cpu_ms_per_query": {str(b): v for b, v in self.cpu_ms_per_query.items()},
            "comparison": self.comparison,
        }


def _quality(name, first_stage, reranker, vs, run, qrels) -> DecisionRow:
    _, per_query = ir_metrics_per_query(run, qrels, ndcg_at=[10], recall_at=[100], mrr_at=[], map_at=[])
    return DecisionRow(
        name,
        first_stage,
        reranker,
        vs,
        float(np.mean(per_query[NDCG])),
        float(np.mean(per_query[RECALL])),
        per_query[NDCG],
        run=run,
    )


def decision_table(
    s: RetrievalSet,
    bi_encoders: list[tuple[str, Any]],
    settings: dict,
    batch_size: int = 64,
    stats: dict | None = None,
    show_progress: bool = False,
    doc_embeddings: dict | None = None,
) -> dict:
    """The decision table of one retrieval set.

    Args:
        s: the eval set (every query is scored; the first `max_queries_for_latency` are timed).
        bi_encoders: (label, Encoder) in row order, e.g. [("bi-encoder base", base), ("bi-encoder tuned", tuned)].
        settings: eval.decision (see DEFAULTS): reranker, top_k, batch_sizes, max_queries_for_latency, bm25,
            rerank_batch_size, max_length.
        batch_size: corpus (and quality-pass query) encoding batch size (eval.batch_size).
        stats: eval.stats (alpha, confidence, n_resamples, seed).
        doc_embeddings: {bi-encoder label: (n_docs, dim) corpus embeddings this encoder already computed}: not
            encoded again; their offline cost is reported as not timed.
    Returns:
        {"rows": [DecisionRow], "offline": [{"what", "seconds"}], "n_queries", "n_latency_queries", "depth"}.
    Raises:
        ConfigError / ModelError: a reranker folder that does not load (naming eval.decision.reranker).
    """
    from embedexp.eval.stats import compare_paired, verdicts

    cfg = {**DEFAULTS, **settings}
    st = {"alpha": 0.05, "confidence": 0.95, "n_resamples": 10_000, "seed": 0, **(stats or {})}
    top_k = int(cfg["top_k"])
    depth = max(100, top_k)
    n_latency = min(int(cfg["max_queries_for_latency"]), len(s.query_ids))
    rerankers = _load_rerankers(
        rerankers_of(cfg["reranker"]), top_k, int(cfg["rerank_batch_size"]), int(cfg["max_length"])
    )
    q_text, d_text = dict(zip(s.query_ids, s.queries)), dict(zip(s.doc_ids, s.docs))
    stages = [BM25Stage(s)] if cfg["bm25"] else []
    stages += [
        DenseStage(label, enc, s, batch_size, show_progress, (doc_embeddings or {}).get(label))
        for label, enc in bi_encoders
    ]
    rows: list[DecisionRow] = []
    previous = None
    for stage in stages:
        first = stage.run_all(depth, batch_size)
        block = [_quality(stage.label, stage.label, None, previous, first, s.qrels)]
        for label, r in rerankers:
            reranked, _ = r.rerank(first, q_text, d_text)
            name = f"{stage.label} + {label}"
            block.append(_quality(name, stage.label, str(r.path), stage.label, with_tail(reranked, first), s.qrels))
        for b in cfg["batch_sizes"]:
            timing = measure_latency(stage, rerankers, depth, int(b), n_latency)
            for row, key in zip(block, [None] + [label for label, _ in rerankers]):
                row.ms_per_query[int(b)], row.cpu_ms_per_query[int(b)] = timing[key]
        rows += block
        previous = stage.label
    by_name = {r.name: r for r in rows}
    tested = [r for r in rows if r.vs is not None]
    comparisons = [
        compare_paired(
            by_name[r.vs].per_query,
            r.per_query,
            n_resamples=int(st["n_resamples"]),
            confidence=float(st["confidence"]),
            seed=int(st["seed"]),
        )
        for r in tested
    ]
    for r, c, (p_holm, verdict) in zip(tested, comparisons, verdicts(comparisons, float(st["alpha"]))):
        r.comparison = {**c.as_dict(), "metric": NDCG, "p_holm": p_holm, "verdict": verdict}
    return {
        "rows": rows,
        "offline": [{"what": st_.offline_what, "seconds": st_.offline_seconds} for st_ in stages],
        "n_queries": len(s.query_ids),
        "n_latency_queries": n_latency,
        "depth": depth,
    }


def run_decision(
    sets: list, bi_encoders: list[tuple[str, Any]], settings: dict, batch_size: int, stats: dict | None, show_progress
) -> dict[str, dict]:
    """decision_table for every retrieval set: {set name: table}; a ConfigError when there is none."""
    retrieval = [s for s in sets if isinstance(s, RetrievalSet)]
    if not retrieval:
        raise ConfigError(
            "eval.decision.enabled=true but the eval sets have no retrieval set; expected a data preset with one "
            "(e.g. data=scifact)"
        )
    return {s.name: decision_table(s, bi_encoders, settings, batch_size, stats, show_progress) for s in retrieval}


def environment(bi_encoders: list[tuple[str, Any]]) -> dict:
    """Where the latency was measured: torch threads and the bi-encoders' device."""
    import torch

    devices = sorted({str(getattr(enc, "device", "cpu")) for _, enc in bi_encoders})
    return {"torch_threads": torch.get_num_threads(), "device": ", ".join(devices) or "cpu"}


def as_json(tables: dict[str, dict], settings: dict, env: dict) -> dict:
    """results.json's `decision`: the settings, where it was measured, and every set's rows and offline costs."""
    cfg = {**DEFAULTS, **settings}
    return {
        "settings": {**cfg, "reranker": rerankers_of(cfg["reranker"])},
        "environment": env,
        "sets": {
            name: {**{k: v for k, v in t.items() if k != "rows"}, "rows": [r.as_dict() for r in t["rows"]]}
            for name, t in tables.items()
        },
    }


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "" if v is None else format(v, fmt)


def _p(v: float) -> str:
    return "<0.0001" if v < 1e-4 else f"{v:.4f}"


def markdown(tables: dict[str, dict], settings: dict, env: dict, confidence: float = 0.95) -> str:
    """The results.md section: one table per retrieval set, then its offline costs."""
    cfg = {**DEFAULTS, **settings}
    sizes = [int(b) for b in cfg["batch_sizes"]]
    out = []
    for name, t in tables.items():
        head = "| pipeline | nDCG@10 | Recall@100 | " + " | ".join(f"ms/query (batch {b})" for b in sizes)
        head += f" | vs | ΔnDCG@10 [{confidence:.0%} CI] | p (Holm) | verdict |"
        rule = "|---|---:|---:|" + "---:|" * len(sizes) + "---|---|---:|---|"
        lines = [head, rule]
        for r in t["rows"]:
            c = r.comparison
            cells = [r.name, _num(r.ndcg), _num(r.recall)] + [_num(r.ms_per_query.get(b), ".1f") for b in sizes]
            if c:
                verdict = c["verdict"] if c["verdict"] == "no significant difference" else f"**{c['verdict']}**"
                cells += [
                    r.vs,
                    f"{c['delta']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
                    f"{_p(c['p'])} ({_p(c['p_holm'])})",
                    verdict,
                ]
            else:
                cells += ["", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
        offline = "; ".join(
            f"{o['what']} " + ("precomputed, not timed" if o["seconds"] is None else f"{o['seconds']:.1f} s")
            for o in t["offline"]
        )
        out.append(
            f"### {name}\n\n"
            f"nDCG@10 and Recall@100 over all {t['n_queries']} queries, first stages retrieve {t['depth']} documents "
            f"per query, rerankers re-order the top {cfg['top_k']}. ms/query: wall clock over the first "
            f"{t['n_latency_queries']} queries, batch b = b queries at a time (encode + search the prebuilt index "
            f"+ rerank), device {env['device']}, torch threads {env['torch_threads']}. vs: the row this one is tested "
            "against (its first stage, or the previous first stage), paired over queries on nDCG@10, randomisation "
            "p with Holm's correction over this table.\n\n" + "\n".join(lines) + "\n\n"
            f"Offline cost (once per corpus, not per query): {offline}.\n"
        )
    return "\n## Decision table\n\n" + "\n".join(out)
