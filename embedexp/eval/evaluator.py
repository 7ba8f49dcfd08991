"""Evaluate an Encoder on named eval sets; cache results of models that do not change (the base)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from embedexp.eval.metrics import ir_metrics, retrieve, spearman, pearson
from embedexp.eval.sets import RetrievalSet, STSSet, load_eval_sets

log = logging.getLogger(__name__)
CACHE_VERSION = "2"  # 2: trec_eval tie order; ignore_identical_ids per set (off by default)


class Evaluator:
    """Computes every metric of every set: `{"<set>/<metric>": value}`."""

    def __init__(
        self,
        sets: dict,
        batch_size: int = 64,
        ndcg_at: list[int] = (10,),
        recall_at: list[int] = (10, 100),
        mrr_at: list[int] = (10,),
        map_at: list[int] = (10,),
        cache_dir: str | None = None,
        show_progress: bool = True,
        dims: list[int] | None = None,
        mteb: dict | None = None,
        rerank: dict | None = None,
    ) -> None:
        self.sets = load_eval_sets(sets)
        self.batch_size = batch_size
        self.ks = {"ndcg_at": list(ndcg_at), "recall_at": list(recall_at), "mrr_at": list(mrr_at), "map_at": list(map_at)}
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.show_progress = show_progress
        # Matryoshka: also score embeddings truncated to each of these dims (re-normalised)
        self.dims = sorted({int(d) for d in dims}, reverse=True) if dims else []
        # optional: the real mteb package on these sets and named MTEB tasks; cross-encoder second stage
        self.mteb = _mteb_from_config(mteb, self.sets, sets, cache_dir, batch_size, show_progress)
        self.reranker = _rerank_from_config(rerank, show_progress)

    def _key(self, encoder, fingerprint: str | None = None) -> str:
        h = hashlib.blake2b(digest_size=16)
        payload = {"v": CACHE_VERSION, "ks": self.ks, "dims": self.dims, "model": fingerprint or encoder.fingerprint()}
        if self.mteb is not None:
            payload["mteb"] = self.mteb.settings()
        if self.reranker is not None:
            payload["rerank"] = self.reranker.settings()
        h.update(json.dumps(payload, sort_keys=True).encode())
        for s in self.sets:
            h.update(f"{s.name}:{s.fingerprint}".encode())
        return h.hexdigest()

    def evaluate(self, encoder, use_cache: bool = False) -> dict[str, float]:
        """All metrics; with use_cache, reuse/stash results keyed by model + data + metric settings."""
        path = None
        fingerprint = encoder.fingerprint() if self.mteb is not None else None
        if use_cache and self.cache_dir is not None:
            path = self.cache_dir / "eval" / f"{self._key(encoder, fingerprint)}.json"
            if path.is_file():
                try:  # a cache is trusted only if it is a non-empty mapping of metric -> number
                    metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"]
                    if not metrics or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
                        raise ValueError("metrics are not numbers")
                    log.info("base-model results from cache %s", path)
                    return {str(k): float(v) for k, v in metrics.items()}
                except (ValueError, KeyError, TypeError, AttributeError, OSError):
                    log.warning("ignoring corrupt eval cache %s; recomputing", path)
        results: dict[str, float] = {}
        for s in self.sets:
            t0 = time.perf_counter()
            if isinstance(s, RetrievalSet):
                results.update({f"{s.name}/{k}": v for k, v in self._retrieval(encoder, s).items()})
            elif isinstance(s, STSSet):
                results.update({f"{s.name}/{k}": v for k, v in self._sts(encoder, s).items()})
            log.info("evaluated %s in %.1fs", s.name, time.perf_counter() - t0)
        if self.mteb is not None:
            results.update(self.mteb.run(encoder, fingerprint))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"metrics": results}))
            os.replace(tmp, path)
        return results

    def _retrieval(self, encoder, s: RetrievalSet) -> dict[str, float]:
        """IR metrics of one set: top-k by exact cosine in trec_eval's order (ties: doc id descending)."""
        q = encoder.encode(s.queries, "query", self.batch_size, self.show_progress, desc=f"{s.name}: queries")
        d = encoder.encode(s.docs, "document", self.batch_size, self.show_progress, desc=f"{s.name}: corpus")
        k = max(max(v) for v in self.ks.values() if v)
        out = {}
        for dim, suffix in self._dims(q.shape[1]):
            run = retrieve(s.query_ids, q[:, :dim], s.doc_ids, d[:, :dim], k, ignore_identical_ids=s.ignore_identical_ids)
            out.update({f"{name}{suffix}": v for name, v in ir_metrics(run, s.qrels, **self.ks).items()})
        if self.reranker is not None:
            out.update(self.reranker.evaluate(s, q, d, self.ks))
        return out

    def _sts(self, encoder, s: STSSet) -> dict[str, float]:
        a = encoder.encode(s.text_a, "document", self.batch_size, self.show_progress, desc=f"{s.name}: sentence1")
        b = encoder.encode(s.text_b, "document", self.batch_size, self.show_progress, desc=f"{s.name}: sentence2")
        out = {}
        for dim, suffix in self._dims(a.shape[1]):
            cos = torch.nn.functional.cosine_similarity(a[:, :dim], b[:, :dim], dim=-1).tolist()
            out.update({f"spearman{suffix}": spearman(cos, s.scores), f"pearson{suffix}": pearson(cos, s.scores)})
        return out

    def _dims(self, full: int) -> list[tuple[int, str]]:
        """(dim, metric-name suffix): the full embedding, then each smaller Matryoshka dim."""
        return [(full, "")] + [(d, f"@dim{d}") for d in self.dims if d < full]


def _mteb_from_config(cfg, eval_sets, set_specs, cache_dir, batch_size, show_progress):
    if cfg is None:
        return None
    from embedexp.eval.mteb_eval import from_config  # imports mteb (seconds) only when asked for

    return from_config(cfg, eval_sets, dict(set_specs or {}), cache_dir, batch_size, show_progress)


def _rerank_from_config(cfg, show_progress):
    from embedexp.eval.rerank import from_config

    return from_config(cfg, show_progress)
