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
CACHE_VERSION = "1"


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
    ) -> None:
        self.sets = load_eval_sets(sets)
        self.batch_size = batch_size
        self.ks = {"ndcg_at": list(ndcg_at), "recall_at": list(recall_at), "mrr_at": list(mrr_at), "map_at": list(map_at)}
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.show_progress = show_progress
        # Matryoshka: also score embeddings truncated to each of these dims (re-normalised)
        self.dims = sorted({int(d) for d in dims}, reverse=True) if dims else []

    def _key(self, encoder) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps({"v": CACHE_VERSION, "ks": self.ks, "dims": self.dims, "model": encoder.fingerprint()}, sort_keys=True).encode())
        for s in self.sets:
            h.update(f"{s.name}:{s.fingerprint}".encode())
        return h.hexdigest()

    def evaluate(self, encoder, use_cache: bool = False) -> dict[str, float]:
        """All metrics; with use_cache, reuse/stash results keyed by model + data + metric settings."""
        path = None
        if use_cache and self.cache_dir is not None:
            path = self.cache_dir / "eval" / f"{self._key(encoder)}.json"
            if path.is_file():
                try:
                    cached = json.loads(path.read_text())
                    log.info("base-model results from cache %s", path)
                    return {k: float(v) for k, v in cached["metrics"].items()}
                except (ValueError, KeyError):
                    log.warning("ignoring corrupt eval cache %s", path)
        results: dict[str, float] = {}
        for s in self.sets:
            t0 = time.perf_counter()
            if isinstance(s, RetrievalSet):
                results.update({f"{s.name}/{k}": v for k, v in self._retrieval(encoder, s).items()})
            elif isinstance(s, STSSet):
                results.update({f"{s.name}/{k}": v for k, v in self._sts(encoder, s).items()})
            log.info("evaluated %s in %.1fs", s.name, time.perf_counter() - t0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"metrics": results}))
            os.replace(tmp, path)
        return results

    def _retrieval(self, encoder, s: RetrievalSet) -> dict[str, float]:
        q = encoder.encode(s.queries, "query", self.batch_size, self.show_progress, desc=f"{s.name}: queries")
        d = encoder.encode(s.docs, "document", self.batch_size, self.show_progress, desc=f"{s.name}: corpus")
        k = max(max(v) for v in self.ks.values() if v)
        out = {}
        for dim, suffix in self._dims(q.shape[1]):
            run = retrieve(s.query_ids, q[:, :dim], s.doc_ids, d[:, :dim], k)
            out.update({f"{name}{suffix}": v for name, v in ir_metrics(run, s.qrels, **self.ks).items()})
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
