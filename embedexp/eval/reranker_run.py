"""Evaluation of a reranker (cross-encoder) run: first stage alone vs first stage + base vs + tuned reranker.

A reranker only re-orders what a first stage retrieved, so its base-vs-tuned comparison is made on the same
first-stage candidates: for every retrieval eval set, the first stage (`eval.first_stage`: `bm25`, the default,
or a bi-encoder model preset) retrieves the top `eval.rerank.top_k` (default 100) documents per query, and the
reranker re-orders them (`embedexp.eval.rerank.Reranker` with the model as its scorer; ties keep the first
stage's order). Metrics are `embedexp.eval.metrics` (trec_eval's definitions), per query, so `results.md`
gets the paired statistics of base vs tuned reranker (the table), and a section with the three pipelines side
by side plus first stage alone vs first stage + tuned reranker with its own statistics.

BM25 here is `embedexp.miners.bm25.BM25Index` (rank_bm25's Okapi scores, the miner's default tokenisation);
a document is retrieved only with a score > 0, ties in trec_eval's order (score desc, then doc id desc).
`<set>/rerank_ms_per_query` is the reranker's wall time over the set's pairs / queries (batch
`eval.rerank.batch_size`); the first stage's ms/query (query side only: BM25 scoring, or query encoding + exact
search; the corpus index/encoding is not counted) is in the section and in results.json's `first_stage`.
STS sets are skipped (a reranker is judged by ranking).

Progress: the first stage's corpus encoding shows `embedexp.progress` bars/lines under `eval.show_progress`, and
each long stage (BM25 indexing and scoring, corpus encoding, each reranking pass) logs a start line and an end
line with its rate (documents/s, pairs/s; `embedexp.eval.stage_log`).

`rerank_base=false` (`++eval.rerank_base=false`) skips the base reranker's pass: an untrained head's ranking
is noise and costs a full reranking pass. The base evaluation (`evaluate(model, use_cache=True)`, the call made
before training) then returns the first stage alone, so the run's base-vs-tuned table reads "first stage alone
vs first stage + tuned reranker", and the section says the base reranker was skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedexp.errors import ConfigError
from embedexp.eval.metrics import ir_metrics_per_query, retrieve
from embedexp.eval.rerank import Reranker, first_stage_depth, with_tail
from embedexp.eval.results import compare, markdown_table
from embedexp.eval.sets import RetrievalSet, load_eval_sets
from embedexp.eval.stage_log import stage as log_stage
from embedexp.io import atomic_write

log = logging.getLogger(__name__)
CACHE_VERSION = "2"  # 2: first stage retrieves max(top_k, cutoffs), reranked runs keep the tail
K_KEYS = ("ndcg_at", "recall_at", "mrr_at", "map_at")
# eval keys that only mean something for a bi-encoder run; refused in a reranker run (one line)
BI_ENCODER_ONLY = {"dims": None, "mteb": None}


def check_reranker_eval(ev: dict) -> None:
    """The `eval` keys a reranker run cannot honour, as one ConfigError line each (before any data loads)."""
    for key, off in BI_ENCODER_ONLY.items():
        if ev.get(key) not in (off, [], {}):
            raise ConfigError(
                f"eval.{key}={ev.get(key)!r} is for bi-encoder runs; a cross-encoder run is evaluated as first "
                f"stage + reranker: expected eval.{key}=null"
            )
    rerank = ev.get("rerank") or {}
    if not isinstance(rerank, dict):
        raise ConfigError(f"eval.rerank={rerank!r}; expected a mapping (top_k, batch_size) or null")
    if rerank.get("model") is not None:
        raise ConfigError(
            f"eval.rerank.model={rerank.get('model')!r}: a cross-encoder run reranks with the model it trains; "
            "expected eval.rerank.model=null (eval.rerank.top_k and batch_size still apply)"
        )
    first = ev.get("first_stage", "bm25")
    if not (first == "bm25" or (isinstance(first, dict) and "_target_" in first)):
        raise ConfigError(
            f"eval.first_stage={first!r}; expected bm25 or a bi-encoder model preset (+model@eval.first_stage=minilm)"
        )


class FirstStage:
    """The candidates a reranker re-orders: `bm25` or a bi-encoder (any `model` preset, instantiated lazily)."""

    def __init__(self, spec: Any = "bm25", batch_size: int = 64, show_progress: bool = False) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._encoder = None

    @property
    def name(self) -> str:
        return "bm25" if self.spec == "bm25" else str(self.spec.get("name") or self.spec.get("model_name_or_path"))

    def settings(self) -> dict:
        if self.spec == "bm25":
            from embedexp.miners.bm25 import BM25Miner

            return {"bm25": BM25Miner(show_progress=False, cache=False).scorer_config()}
        return {"model": self.encoder().fingerprint()}

    def encoder(self):
        if self._encoder is None:
            from hydra.utils import instantiate

            self._encoder = instantiate(self.spec)
        return self._encoder

    def run(self, s: RetrievalSet, k: int) -> tuple[dict[str, list[tuple[str, float]]], float]:
        """({query id: [(doc id, score), ...] top k in trec_eval order}, query-side seconds)."""
        if self.spec == "bm25":
            with log_stage(f"{s.name}: first stage bm25", len(s.docs), "documents", "indexing and searching"):
                return bm25_run(s, k)
        enc = self.encoder()
        with log_stage(f"{s.name}: first stage {self.name}", len(s.docs), "documents", "encoding"):
            d = enc.encode(
                s.docs, "document", self.batch_size, self.show_progress, desc=f"{s.name}: corpus (first stage)"
            )
        t0 = time.perf_counter()
        q = enc.encode(s.queries, "query", self.batch_size, desc=f"{s.name}: queries (first stage)")
        run = retrieve(s.query_ids, q, s.doc_ids, d, k, ignore_identical_ids=s.ignore_identical_ids)
        return run, time.perf_counter() - t0


def bm25_run(s: RetrievalSet, k: int) -> tuple[dict[str, list[tuple[str, float]]], float]:
    """BM25 (rank_bm25's Okapi; the BM25 miner's tokenisation and k1/b/epsilon defaults) top-k of every query.

    Only documents with a score > 0 are retrieved; order and the top-k cut follow trec_eval (score descending,
    then doc id descending). With `s.ignore_identical_ids` the document with the query's id is dropped.
    Returns the run and the query-side seconds (index building not counted).
    """
    from embedexp.miners.bm25 import BM25Index
    from embedexp.miners.tokenize import Tokenizer

    tok = Tokenizer()
    index = BM25Index(tok.many(s.docs))
    ids = np.asarray(s.doc_ids, dtype=object)
    order = sorted(range(len(s.doc_ids)), key=lambda j: s.doc_ids[j], reverse=True)
    id_rank = np.empty(len(order), dtype=np.int64)
    id_rank[order] = np.arange(len(order))  # 0 = the largest id
    run: dict[str, list[tuple[str, float]]] = {}
    t0 = time.perf_counter()
    block = max(1, (1 << 24) // max(1, index.n_docs))
    q_ids = [index.token_ids(t) for t in tok.many(s.queries)]
    for start in range(0, len(q_ids), block):
        scores = index.score_block(q_ids[start : start + block])
        for r, qid in enumerate(s.query_ids[start : start + block]):
            row = scores[r]
            hit = np.flatnonzero(row > 0)
            if s.ignore_identical_ids:
                hit = hit[ids[hit] != qid]
            if len(hit) > k:  # keep every document tied with the k-th score; the id order decides among them
                kth = np.partition(row[hit], len(hit) - k)[len(hit) - k]
                hit = hit[row[hit] >= kth]
            top = hit[np.lexsort((id_rank[hit], -row[hit]))][:k]
            run[qid] = [(s.doc_ids[j], float(row[j])) for j in top]
    return run, time.perf_counter() - t0


class RerankerRunEvaluator:
    """Evaluates a cross-encoder as the second stage over a fixed first stage, on the retrieval eval sets.

    Has the surface `embedexp.eval.EvaluationCallback` and train.py use from `Evaluator`: `evaluate(model,
    use_cache)` -> {"<set>/<metric>": value} (the reranked pipeline), `last_units` (per-query values), `texts()`,
    `stats`, `mteb` (None); plus `first_stage_results()` and `markdown(base, tuned)`.

    Args: as the `eval` config group; `first_stage` (bm25 | a model preset mapping), `rerank` (top_k, batch_size;
    model must be null). Raises ConfigError for keys a reranker run cannot honour, or no retrieval set.
    """

    def __init__(
        self,
        sets: dict | list,
        batch_size: int = 64,
        ndcg_at=(10,),
        recall_at=(10, 100),
        mrr_at=(10,),
        map_at=(10,),
        cache_dir: str | None = None,
        show_progress: bool = True,
        rerank: dict | None = None,
        stats: dict | None = None,
        first_stage: Any = "bm25",
        rerank_base: bool = True,
        **bi_encoder_only,
    ) -> None:
        check_reranker_eval({**bi_encoder_only, "rerank": rerank, "first_stage": first_stage})
        if not isinstance(rerank_base, bool):
            raise ConfigError(f"eval.rerank_base={rerank_base!r}; expected true or false")
        self.rerank_base = rerank_base
        self.base_skipped = False
        rerank = dict(rerank or {})
        rerank.pop("model", None)
        self.top_k = int(rerank.get("top_k", 100))
        self.rerank_batch_size = int(rerank.get("batch_size", 32))
        Reranker(top_k=self.top_k, batch_size=self.rerank_batch_size, scorer=object())  # checks the two values
        loaded = load_eval_sets(sets)
        self.sets = [s for s in loaded if isinstance(s, RetrievalSet)]
        skipped = [s.name for s in loaded if not isinstance(s, RetrievalSet)]
        if skipped:
            log.info("reranker run: STS set(s) %s skipped (a reranker is evaluated on retrieval sets)", skipped)
        if not self.sets:
            raise ConfigError(
                f"eval.sets has no retrieval set ({', '.join(skipped) or 'none'}); a cross-encoder run is evaluated "
                "by reranking a first stage on retrieval sets: expected at least one set of type retrieval"
            )
        self.batch_size = batch_size
        self.ks = {
            "ndcg_at": list(ndcg_at),
            "recall_at": list(recall_at),
            "mrr_at": list(mrr_at),
            "map_at": list(map_at),
        }
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.show_progress = show_progress
        self.stats = dict(stats or {})
        self.mteb = None
        self.first_stage = FirstStage(first_stage, batch_size, show_progress)
        self.last_units: dict[str, dict] = {}
        self._runs: dict[str, tuple[dict, float]] = {}
        self._first: tuple[dict, dict, dict] | None = None

    @property
    def depth(self) -> int:
        """Documents the first stage retrieves per query: top_k, or the largest metric cutoff when that is deeper
        (the reranker re-orders the top_k; the rest stay below in first-stage order, so Recall@100 is real)."""
        return first_stage_depth(self.top_k, self.ks)

    def _run(self, s: RetrievalSet) -> tuple[dict, float]:
        """The first stage's run on `s` (depth documents per query) and its query-side seconds, computed once per
        process and cached under `<cache_dir>/eval` by the first stage's settings (model fingerprint), the set and
        the depth, so a second reranker run over the same first stage does not re-encode the corpus."""
        if s.name not in self._runs:
            path = self._first_stage_cache_path(s)
            hit = json.loads(path.read_text()) if path is not None and path.is_file() else None
            if hit is not None:
                log.info("%s: first stage %s from cache %s", s.name, self.first_stage.name, path)
                run = {q: [(d, float(v)) for d, v in docs] for q, docs in hit["run"].items()}
                self._runs[s.name] = run, float(hit["seconds"])
            else:
                self._runs[s.name] = self.first_stage.run(s, self.depth)
                if path is not None:
                    run, seconds = self._runs[s.name]
                    atomic_write(path, json.dumps({"run": run, "seconds": seconds}))
        return self._runs[s.name]

    def _first_stage_cache_path(self, s: RetrievalSet) -> Path | None:
        if self.cache_dir is None:
            return None
        payload = {
            "v": CACHE_VERSION,
            "kind": "first_stage_run",
            "first_stage": self.first_stage.settings(),
            "set": s.fingerprint,
            "depth": self.depth,
        }
        key = hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=16).hexdigest()
        return self.cache_dir / "eval" / f"first_stage_{key}.json"

    def first_stage_results(self) -> tuple[dict[str, float], dict[str, dict], dict[str, float]]:
        """(metrics, per-query units, ms/query per set) of the first stage alone, computed once."""
        if self._first is None:
            metrics, units, ms = {}, {}, {}
            for s in self.sets:
                run, seconds = self._run(s)
                m, u = self._metrics(s, run)
                metrics.update(m)
                units.update(u)
                ms[s.name] = 1000.0 * seconds / max(len(s.query_ids), 1)
            self._first = metrics, units, ms
        return self._first

    def _metrics(self, s: RetrievalSet, run: dict) -> tuple[dict[str, float], dict[str, dict]]:
        ids, per_query = ir_metrics_per_query(run, s.qrels, **self.ks)
        metrics = {f"{s.name}/{k}": float(np.mean(v)) for k, v in per_query.items()}
        units = {f"{s.name}/{k}": {"ids": ids, "values": v} for k, v in per_query.items()}
        return metrics, units

    def _cache_path(self, model, s: RetrievalSet) -> Path | None:
        if self.cache_dir is None:
            return None
        payload = {
            "v": CACHE_VERSION,
            "kind": "reranker_run",
            "model": model.fingerprint(),
            "set": s.fingerprint,
            "first_stage": self.first_stage.settings(),
            "top_k": self.top_k,
            "ks": self.ks,
        }
        key = hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=16).hexdigest()
        return self.cache_dir / "eval" / f"{key}.json"

    def evaluate(self, model, use_cache: bool = False) -> dict[str, float]:
        """The first stage's top_k of every retrieval set reranked by `model` (anything with `score(queries, docs,
        batch_size, show_progress, desc=)`): {"<set>/<metric>": value, "<set>/rerank_ms_per_query": ms}.

        use_cache: read/write the results per set under `<cache_dir>/eval`, keyed by the model's fingerprint,
        the set, the first stage and top_k (for the base model, which does not change). With `rerank_base=false`
        such a call (the base evaluation) reranks nothing and returns the first stage alone.
        """
        if use_cache and not self.rerank_base:
            log.info(
                "eval.rerank_base=false: the base reranker pass is skipped; the base results are %s alone",
                self.first_stage.name,
            )
            metrics, units, _ = self.first_stage_results()
            self.base_skipped = True
            self.last_units = dict(units)
            return dict(metrics)
        results: dict[str, float] = {}
        units: dict[str, dict] = {}
        reranker = Reranker(
            top_k=self.top_k, batch_size=self.rerank_batch_size, show_progress=self.show_progress, scorer=model
        )
        for s in self.sets:
            path = self._cache_path(model, s) if use_cache else None
            hit = _read(path)
            if hit is not None:
                log.info("base reranker results for %s from cache %s", s.name, path)
                metrics, set_units = hit
            else:
                run, _ = self._run(s)
                n_pairs = sum(min(len(v), self.top_k) for v in run.values())
                what = f"{s.name}: {self.first_stage.name} top {self.top_k} + reranker"
                with log_stage(what, n_pairs, "pairs", "reranking") as box:
                    reranked, seconds = reranker.rerank(
                        run, dict(zip(s.query_ids, s.queries)), dict(zip(s.doc_ids, s.docs))
                    )
                    box["seconds"] = seconds
                metrics, set_units = self._metrics(s, with_tail(reranked, run))
                metrics[f"{s.name}/rerank_ms_per_query"] = 1000.0 * seconds / max(len(s.query_ids), 1)
                log.info("reranked %s (%s top %d) in %.1fs", s.name, self.first_stage.name, self.top_k, seconds)
                if path is not None:
                    atomic_write(path, json.dumps({"metrics": metrics, "units": set_units}))
            results.update(metrics)
            units.update(set_units)
        self.last_units = units
        return results

    def texts(self) -> dict[str, dict[str, str]]:
        """{set: {query id: query text}} for results.md's per-query section."""
        return {s.name: dict(zip(s.query_ids, s.queries)) for s in self.sets}

    def summary(self, base: dict[str, float], tuned: dict[str, float], units: dict[str, dict]) -> dict:
        """results.json's `first_stage` block: the first stage's metrics and ms/query, and first stage alone vs
        first stage + tuned reranker with paired statistics (`embedexp.eval.results.compare`)."""
        metrics, first_units, ms = self.first_stage_results()
        tuned = {k: v for k, v in tuned.items() if k in metrics}  # the ranking metrics (not the reranker's ms)
        rows = compare(metrics, tuned, {"base": first_units, "tuned": units.get("tuned") or {}}, self.stats)
        return {
            "name": self.first_stage.name,
            "top_k": self.top_k,
            "metrics": metrics,
            "ms_per_query": ms,
            "vs_tuned_reranker": rows,
        }

    def markdown(self, base: dict[str, float], tuned: dict[str, float], summary: dict) -> str:
        """results.md section: the three pipelines side by side, then first stage alone vs + tuned reranker."""
        name, k = summary["name"], summary["top_k"]
        first = summary["metrics"]
        skipped = self.base_skipped
        lines = [
            f"\n## First stage ({name}, top {k}) alone vs + base reranker vs + tuned reranker\n",
            *(
                [
                    f"eval.rerank_base=false: the base (untrained) reranker was not run; the run's base-vs-tuned "
                    f"table above compares {name} alone with {name} + tuned reranker.\n"
                ]
                if skipped
                else []
            ),
            f"| metric | {name} alone | + base reranker{' (skipped)' if skipped else ''} | + tuned reranker |",
            "|---|---:|---:|---:|",
        ]
        if skipped:
            base = {}
        for metric, v in first.items():
            b, t = base.get(metric), tuned.get(metric)
            lines.append(f"| {metric} | {v:.4f} | {_f(b)} | {_f(t)} |")
        for s in self.sets:
            b_ms = _f(base.get(f"{s.name}/rerank_ms_per_query"), 1)
            lines.append(
                f"| {s.name}/ms_per_query | {summary['ms_per_query'][s.name]:.1f} (query side) | "
                f"{'+' + b_ms if b_ms else ''} | "
                f"+{_f(tuned.get(f'{s.name}/rerank_ms_per_query'), 1)} |"
            )
        confidence = float(self.stats.get("confidence", 0.95))
        return (
            "\n".join(lines)
            + f"\n\n### {name} alone vs {name} + tuned reranker\n\n"
            + markdown_table(summary["vs_tuned_reranker"], f"{name} alone", "+ tuned reranker", confidence)
        )


def _f(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _read(path: Path | None) -> tuple[dict, dict] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        metrics = {str(k): float(v) for k, v in data["metrics"].items()}
        return metrics, dict(data.get("units") or {})
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        log.warning("ignoring corrupt eval cache %s; recomputing", path)
        return None


def write_reranker_card(model_dir: str | Path, rows: dict[str, dict], meta: dict[str, Any]) -> Path:
    """`<model_dir>/README.md`: a short card of the exported reranker (how to load it, the run's table)."""
    model_dir = Path(model_dir)
    fs = meta.get("first_stage") or {}
    md = (
        "---\nlibrary_name: sentence-transformers\npipeline_tag: text-ranking\ntags:\n- cross-encoder\n- reranker\n"
        f"- embedexp\n---\n\n# {meta.get('title', 'reranker')}\n\n"
        f"A cross-encoder (one relevance logit per (query, document) pair) fine-tuned by embedexp from "
        f"{meta.get('base_model')} with {meta.get('loss')} for {meta.get('steps')} steps.\n\n"
        "```python\nfrom sentence_transformers import CrossEncoder\n\n"
        f'model = CrossEncoder("{model_dir}")\n'
        'scores = model.predict([("query", "document")])  # raw logits (activation: Identity)\n```\n\n'
        f"Evaluated as {fs.get('name', 'first stage')} top {fs.get('top_k', '')} reranked, base vs fine-tuned "
        "reranker:\n\n" + markdown_table(rows)
    )
    return atomic_write(model_dir / "README.md", md)
