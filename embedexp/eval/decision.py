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
is therefore its first stage's. Each distinct (query, document) pair is scored once per table in the quality
passes (`_PairScorer.memo`: the rows' top-k lists overlap); a reused score may differ from a fresh one by float
rounding only.

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

Each corpus is encoded once per command: `EncodeRecorder` keeps the query and corpus embeddings the Evaluator
computed for the base-vs-tuned metrics and the table reuses them (their offline cost is then reported as
"precomputed, not timed"); only a model whose results came from the eval cache is encoded here.

Precision (`eval.precision`: fp32 | bf16 | auto): the bi-encoders encode (corpus and the timed queries) and the
cross-encoders run their forward under bf16 autocast where `embedexp.trainer.inference.resolve_inference_precision`
says bf16 is native on the model's device; elsewhere fp32, with that function's one warning line for an explicit
bf16. The precision each model ran in is in the table (and results.json's `precision`).

Progress: every long stage (BM25 indexing, corpus encoding, each reranking pass, each latency measurement) logs a
start line and an end line with its rate (`embedexp.eval.stage_log`); encoding and reranking also show
`embedexp.progress` bars/lines under `eval.show_progress`.
"""

from __future__ import annotations

import inspect
import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from embedexp.errors import ConfigError, ModelError
from embedexp.eval.metrics import ir_metrics_per_query, retrieve
from embedexp.eval.rerank import with_tail
from embedexp.eval.sets import RetrievalSet
from embedexp.eval.stage_log import stage as log_stage
from embedexp.progress import progress_bar
from embedexp.trainer.inference import check_precision, resolve_inference_precision

log = logging.getLogger(__name__)

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


class PrecisionChoice:
    """`eval.precision` resolved per device, once each (so an explicit bf16 that falls back warns once per table).

    Calling it with a device ("cpu", "cuda:0", a torch.device) gives "fp32" or "bf16" by
    `embedexp.trainer.inference.resolve_inference_precision`. Raises ConfigError for a value not in fp32/bf16/auto.
    """

    def __init__(self, value: str = "fp32") -> None:
        self.value = check_precision("eval.precision", value)
        self._by_device: dict[str, str] = {}

    def __call__(self, device: Any) -> str:
        kind = str(getattr(device, "type", device) or "cpu")
        if kind not in self._by_device:
            self._by_device[kind] = resolve_inference_precision(self.value, kind, "eval.precision")
        return self._by_device[kind]


def _encode_kw(precision: str) -> dict:
    """encode() keyword of a resolved precision: none for fp32 (any encoder, also API ones, accepts that)."""
    return {} if precision == "fp32" else {"precision": precision}


class EncodeRecorder:
    """Keeps the embeddings a bi-encoder computes for the retrieval sets' queries and corpora, for the table.

    `with recorder.watch("bi-encoder base", encoder): evaluator.evaluate(encoder)` records every
    `encoder.encode(texts, kind, ..., precision=...)` call whose `texts` is one of the watched sets' `docs` or
    `queries` lists (the very list object: the Evaluator encodes `s.docs` of the same set objects the table is built
    on), so `decision_table(..., recorder=recorder)` does not encode that corpus again. The recorded tensors
    ((n, dim) float32, one per model, set and kind) stay in memory until the table takes them (`take`).

    Args:
        sets: the eval sets (non-retrieval sets are ignored); none: `watch` records nothing.
    """

    def __init__(self, sets: list | tuple = ()) -> None:
        self._lists: dict[int, tuple[list, str, str]] = {}
        for s in sets:
            if isinstance(s, RetrievalSet):
                self._lists[id(s.docs)] = (s.docs, s.name, "document")
                self._lists[id(s.queries)] = (s.queries, s.name, "query")
        self._kept: dict[tuple[str, str, str], tuple[str, Any]] = {}

    @contextmanager
    def watch(self, label: str, encoder: Any) -> Iterator[None]:
        """Record `encoder.encode` results under `label` inside the block (the method is restored afterwards)."""
        if not self._lists or encoder is None:
            yield
            return
        original = encoder.encode
        signature = inspect.signature(original)
        own = vars(encoder).get("encode", None)  # an instance attribute to restore (usually none: the class method)

        def encode(*args, **kwargs):
            out = original(*args, **kwargs)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return out
            bound.apply_defaults()
            values = list(bound.arguments.values())
            texts = values[0] if values else None
            hit = self._lists.get(id(texts))
            kind = bound.arguments.get("kind", "document")
            if hit is not None and hit[0] is texts and hit[2] == kind:
                self._kept[(label, hit[1], kind)] = (str(bound.arguments.get("precision", "fp32")), out)
            return out

        encoder.encode = encode
        try:
            yield
        finally:
            if own is None:
                del encoder.encode
            else:
                encoder.encode = own

    def take(self, label: str, set_name: str, kind: str, precision: str):
        """The recorded (n, dim) embeddings of `label`'s `kind` texts of the set, if computed at `precision`
        (else None); handed over once (the recorder lets go of them)."""
        kept = self._kept.pop((label, set_name, kind), None)
        return kept[1] if kept is not None and kept[0] == precision else None


class _PairScorer:
    """A cross-encoder scorer run under a resolved precision (bf16: autocast on its device), with progress.

    `score` orders the pairs as CrossEncoderScorer / CrossEncoderModel do (query + document length, longest
    first, stable) and hands them to the wrapped scorer in chunks of whole mini-batches, so every forward batch is
    the one a single call would make (identical scores) while `embedexp.progress` reports pairs as they go.

    `memo` ({(query text, document text): score}, or None: off): while set, a pair already scored is not scored
    again (the quality passes: BM25, base and tuned top-k lists share many pairs); the latency passes turn it off,
    since they time the real work. A reused score was computed in another mini-batch, so it can differ from a
    fresh one by float rounding (~1e-7), never more.
    """

    CHUNK_BATCHES = 16

    def __init__(self, inner: Any, precision: str, desc: str = "rerank") -> None:
        self.inner, self.precision, self.desc = inner, precision, desc
        self.device = getattr(inner, "device", "cpu")
        self.memo: dict[tuple[str, str], float] | None = None

    def new_pairs(self, pairs: set[tuple[str, str]]) -> int:
        """How many of these (query text, document text) pairs a call would score (all of them without memo)."""
        return len(pairs) if self.memo is None else sum(1 for k in pairs if k not in self.memo)

    def _autocast(self):
        if self.precision != "bf16":
            return nullcontext()
        import torch

        return torch.autocast(str(getattr(self.device, "type", self.device)).split(":")[0], dtype=torch.bfloat16)

    def score(
        self, queries: list[str], docs: list[str], batch_size: int = 32, show_progress: bool = False, desc: str = ""
    ) -> np.ndarray:
        """(n,) float64 scores of the pairs (queries[i], docs[i])."""
        if self.memo is None:
            return self._score(queries, docs, batch_size, show_progress)
        keys = list(zip(queries, docs))
        todo = [k for k in dict.fromkeys(keys) if k not in self.memo]
        if todo:
            fresh = self._score([q for q, _ in todo], [d for _, d in todo], batch_size, show_progress)
            self.memo.update(zip(todo, fresh.tolist()))
        return np.array([self.memo[k] for k in keys], dtype=np.float64)

    def _score(self, queries: list[str], docs: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        n = len(queries)
        out = np.empty(n, dtype=np.float64)
        order = sorted(range(n), key=lambda i: -(len(queries[i]) + len(docs[i])))
        chunk = batch_size * self.CHUNK_BATCHES
        with progress_bar(n, self.desc, not show_progress, unit="pair") as bar, self._autocast():
            for c0 in range(0, n, chunk):
                sel = order[c0 : c0 + chunk]
                out[sel] = self.inner.score([queries[i] for i in sel], [docs[i] for i in sel], batch_size, False)
                bar.update(len(sel))
        return out


# ---------------------------------------------------------------- first stages
class BM25Stage:
    """BM25 Okapi (rank_bm25's scores, the miners' `fast` posting index) with the miners' default tokenizer."""

    label = "BM25"

    def __init__(self, s: RetrievalSet) -> None:
        from embedexp.miners.bm25 import BM25Index
        from embedexp.miners.tokenize import Tokenizer

        self.s = s
        self.precision = None  # no neural model
        self.tokenizer = Tokenizer(key="eval.decision")
        with log_stage(f"{s.name}: BM25", len(s.docs), "documents", "indexing"):
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
        self,
        label: str,
        encoder,
        s: RetrievalSet,
        batch_size: int,
        show_progress: bool = False,
        doc_emb=None,
        precision: str = "fp32",
        query_emb=None,
    ) -> None:
        """`doc_emb` (n_docs, dim) / `query_emb` (n_queries, dim): the corpus / the set's queries already encoded by
        this encoder at `precision` (the corpus's offline cost is then not timed). `precision`: "fp32" or "bf16"
        (resolved), used for every encode here. Raises ValueError for precomputed embeddings of the wrong length."""
        import torch
        import torch.nn.functional as F

        self.label, self.encoder, self.s = label, encoder, s
        self.precision, self._kw = precision, _encode_kw(precision)
        self.offline_what = f"{label}: encoding {len(s.docs)} documents"
        self.offline_seconds = None
        if query_emb is not None and tuple(query_emb.shape)[0] != len(s.queries):
            raise ValueError(
                f"{label}: {tuple(query_emb.shape)[0]} precomputed embeddings for {len(s.queries)} queries"
            )
        self.query_emb = query_emb
        if doc_emb is None:
            with log_stage(f"{s.name}: {label}", len(s.docs), "documents", f"encoding ({precision})"):
                t0 = time.perf_counter()
                doc_emb = encoder.encode(
                    s.docs, "document", batch_size, show_progress, desc=f"{s.name}: corpus ({label})", **self._kw
                )
                self.offline_seconds = time.perf_counter() - t0
        elif tuple(doc_emb.shape)[0] != len(s.docs):
            raise ValueError(f"{label}: {tuple(doc_emb.shape)[0]} precomputed embeddings for {len(s.docs)} documents")
        else:
            log.info(
                "%s: %s: the evaluation's %d document embeddings reused (not encoded again)", s.name, label, len(s.docs)
            )
        self.doc_emb = torch.as_tensor(doc_emb, dtype=torch.float32)
        self.index = _flat_ip(F.normalize(self.doc_emb.float(), dim=-1).numpy())

    def search(self, query_ids: list[str], queries: list[str], depth: int) -> Run:
        """Encode the queries (one batch) and search the prebuilt index: the online path."""
        import torch.nn.functional as F

        drop = self.s.ignore_identical_ids
        q = self.encoder.encode(queries, "query", len(queries), **self._kw)
        scores, rows = self.index.search(F.normalize(q.float(), dim=-1).numpy(), depth + int(drop))
        run = {}
        for qid, srow, rrow in zip(query_ids, scores.tolist(), rows.tolist()):
            ranked = [(self.s.doc_ids[r], s) for s, r in zip(srow, rrow) if r >= 0]
            run[qid] = [(d, s) for d, s in ranked if not (drop and d == qid)][:depth]
        return run

    def run_all(self, depth: int, batch_size: int) -> Run:
        """Every query, exactly as the run's own metrics rank them (`retrieve`: exact cosine, trec_eval ties)."""
        s = self.s
        q = self.query_emb
        if q is None:
            q = self.encoder.encode(s.queries, "query", batch_size, **self._kw)
        return retrieve(s.query_ids, q, s.doc_ids, self.doc_emb, depth, ignore_identical_ids=s.ignore_identical_ids)


def _flat_ip(emb: np.ndarray):
    """A faiss IndexFlatIP over (n, dim) float32 rows: exact inner-product search (cosine on normalised rows)."""
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    return index


# ---------------------------------------------------------------- second stage
def _load_rerankers(
    paths: list[str],
    top_k: int,
    batch_size: int,
    max_length: int,
    precision: PrecisionChoice | None = None,
    show_progress: bool = False,
) -> list[tuple[str, Any]]:
    """(row label, loaded Reranker) per folder; load errors name eval.decision.reranker.

    Each Reranker scores through `_PairScorer`: its forward in the precision `precision` resolves for the model's
    device (`.scorer().precision`), with progress when `show_progress`; `.path` is the folder.
    """
    from embedexp.eval.rerank import Reranker

    precision = precision or PrecisionChoice()

    names = [Path(p).name or str(p) for p in paths]
    out = []
    for i, p in enumerate(paths):
        label = "reranker" if len(paths) == 1 else f"reranker {names[i]}"
        if names.count(names[i]) > 1:
            label += f" #{i + 1}"
        try:
            loaded = Reranker(p, top_k=top_k, batch_size=batch_size, max_length=max_length)
            inner = loaded.scorer()  # load now: a broken folder fails before any timing
        except (ConfigError, ModelError) as e:
            raise type(e)(str(e).replace("eval.rerank.model", "eval.decision.reranker")) from None
        scorer = _PairScorer(inner, precision(getattr(inner, "device", "cpu")), label)
        scorer.memo = {}  # quality passes score each distinct pair once per table
        r = Reranker(
            top_k=top_k, batch_size=batch_size, max_length=max_length, show_progress=show_progress, scorer=scorer
        )
        r.path = loaded.path
        out.append((label, r))
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
    for _, r in rerankers:
        r.show_progress = False  # no progress output inside the timed region
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
    precision: str | PrecisionChoice = "fp32",
    recorder: EncodeRecorder | None = None,
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
        precision: eval.precision (fp32 | bf16 | auto, or a PrecisionChoice shared across sets): each bi-encoder
            encodes and each cross-encoder runs its forward in what it resolves to on that model's device.
        recorder: the embeddings the Evaluator computed for these encoders (`EncodeRecorder`, by bi-encoder label):
            reused when computed at the same precision, so the corpus is not encoded a second time.
    Returns:
        {"rows": [DecisionRow], "offline": [{"what", "seconds"}], "n_queries", "n_latency_queries", "depth",
        "precision": {"eval.precision": value, <bi-encoder or reranker label>: "fp32" | "bf16"}}.
    Raises:
        ConfigError / ModelError: a reranker folder that does not load (naming eval.decision.reranker).
        ConfigError: a precision not in fp32 / bf16 / auto.
    """
    from embedexp.eval.stats import compare_paired, verdicts

    cfg = {**DEFAULTS, **settings}
    st = {"alpha": 0.05, "confidence": 0.95, "n_resamples": 10_000, "seed": 0, **(stats or {})}
    top_k = int(cfg["top_k"])
    depth = max(100, top_k)
    n_latency = min(int(cfg["max_queries_for_latency"]), len(s.query_ids))
    choice = precision if isinstance(precision, PrecisionChoice) else PrecisionChoice(precision)
    rerankers = _load_rerankers(
        rerankers_of(cfg["reranker"]),
        top_k,
        int(cfg["rerank_batch_size"]),
        int(cfg["max_length"]),
        choice,
        show_progress,
    )
    q_text, d_text = dict(zip(s.query_ids, s.queries)), dict(zip(s.doc_ids, s.docs))
    stages = [BM25Stage(s)] if cfg["bm25"] else []
    for label, enc in bi_encoders:
        p = choice(getattr(enc, "device", "cpu"))
        given = (doc_embeddings or {}).get(label)
        docs = given if given is not None else (recorder.take(label, s.name, "document", p) if recorder else None)
        queries = recorder.take(label, s.name, "query", p) if recorder else None
        stages.append(DenseStage(label, enc, s, batch_size, show_progress, docs, p, queries))
    used = {"eval.precision": choice.value}
    used.update({st_.label: st_.precision for st_ in stages if st_.precision is not None})
    used.update({label: r.scorer().precision for label, r in rerankers})
    rows: list[DecisionRow] = []
    previous = None
    for stage in stages:
        first = stage.run_all(depth, batch_size)
        block = [_quality(stage.label, stage.label, None, previous, first, s.qrels)]
        for label, r in rerankers:
            name = f"{stage.label} + {label}"
            scorer = r.scorer()
            r.show_progress, scorer.desc = show_progress, f"{s.name}: {name}"
            pairs = {(q_text[q], d_text[d]) for q, ranked in first.items() for d, _ in ranked[:top_k]}
            n_new = scorer.new_pairs(pairs)
            verb = f"reranking ({scorer.precision}; {len(pairs) - n_new} of {len(pairs)} distinct pairs already scored)"
            with log_stage(f"{s.name}: {name}", n_new, "new pairs", verb) as box:
                reranked, box["seconds"] = r.rerank(first, q_text, d_text)
            block.append(_quality(name, stage.label, str(r.path), stage.label, with_tail(reranked, first), s.qrels))
        memos = [r.scorer().memo for _, r in rerankers]
        for _, r in rerankers:
            r.scorer().memo = None  # timed: every pair is scored, as in deployment
        for b in cfg["batch_sizes"]:
            what = f"{s.name}: {stage.label}" + (f" (+ {len(rerankers)} reranker(s))" if rerankers else "")
            with log_stage(f"{what}, latency at batch {int(b)}", n_latency, "queries", "timing"):
                timing = measure_latency(stage, rerankers, depth, int(b), n_latency)
            for row, key in zip(block, [None] + [label for label, _ in rerankers]):
                row.ms_per_query[int(b)], row.cpu_ms_per_query[int(b)] = timing[key]
        for (_, r), memo in zip(rerankers, memos):
            r.scorer().memo = memo
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
        "precision": used,
    }


def run_decision(
    sets: list,
    bi_encoders: list[tuple[str, Any]],
    settings: dict,
    batch_size: int,
    stats: dict | None,
    show_progress,
    precision: str = "fp32",
    recorder: EncodeRecorder | None = None,
) -> dict[str, dict]:
    """decision_table for every retrieval set: {set name: table}; a ConfigError when there is none.

    precision: eval.precision (resolved once per device for all sets); recorder: the Evaluator's embeddings of
    these bi-encoders (see decision_table)."""
    retrieval = [s for s in sets if isinstance(s, RetrievalSet)]
    if not retrieval:
        raise ConfigError(
            "eval.decision.enabled=true but the eval sets have no retrieval set; expected a data preset with one "
            "(e.g. data=scifact)"
        )
    choice = PrecisionChoice(precision)
    return {
        s.name: decision_table(s, bi_encoders, settings, batch_size, stats, show_progress, None, choice, recorder)
        for s in retrieval
    }


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


def _precision_line(used: dict | None) -> str:
    """` Precision (eval.precision=auto): bi-encoder base bf16, reranker bf16.` (empty without models)."""
    models = {k: v for k, v in (used or {}).items() if k != "eval.precision"}
    if not models:
        return ""
    return f" Precision (eval.precision={used.get('eval.precision', 'fp32')}): " + (
        ", ".join(f"{k} {v}" for k, v in models.items()) + "."
    )


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
            "p with Holm's correction over this table."
            + _precision_line(t.get("precision"))
            + "\n\n"
            + "\n".join(lines)
            + "\n\n"
            f"Offline cost (once per corpus, not per query): {offline}.\n"
        )
    return "\n## Decision table\n\n" + "\n".join(out)
