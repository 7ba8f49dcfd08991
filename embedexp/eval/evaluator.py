"""Evaluate an Encoder on named eval sets; cache results of models that do not change (the base)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from embedexp.eval.metrics import ir_metrics_per_query, pearson, retrieve, spearman
from embedexp.eval.sets import RetrievalSet, STSSet, load_eval_sets
from embedexp.io import atomic_write
from embedexp.trainer.inference import check_precision, resolve_inference_precision

log = logging.getLogger(__name__)
CACHE_VERSION = "3"  # 2: trec_eval tie order, ignore_identical_ids per set; 3: one entry per set, per-unit values


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
        stats: dict | None = None,
        precision: str = "fp32",
    ) -> None:
        self.sets = load_eval_sets(sets)
        # fp32 (exact, default) | bf16 | auto: bf16 autocast where native (embedexp/trainer/inference.py)
        self.precision = check_precision("eval.precision", precision)
        self._encode_kw: dict = {}
        self.batch_size = batch_size
        self.ks = {
            "ndcg_at": list(ndcg_at),
            "recall_at": list(recall_at),
            "mrr_at": list(mrr_at),
            "map_at": list(map_at),
        }
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.show_progress = show_progress
        # Matryoshka: also score embeddings truncated to each of these dims (re-normalised)
        self.dims = sorted({int(d) for d in dims}, reverse=True) if dims else []
        # optional: the real mteb package on these sets and named MTEB tasks; cross-encoder second stage
        self.mteb = _mteb_from_config(mteb, self.sets, sets, cache_dir, batch_size, show_progress)
        self.reranker = _rerank_from_config(rerank, show_progress)
        self.stats = dict(stats or {})  # settings of the paired statistics in results (embedexp.eval.results)
        self.last_units: dict[str, dict] = {}  # per-unit values of the last evaluate() (see there)

    def _key(self, fingerprint: str, part: str) -> str:
        """Cache key of one part (an eval set's fingerprint, or "mteb") for one model and these metric settings."""
        h = hashlib.blake2b(digest_size=16)
        payload = {"v": CACHE_VERSION, "ks": self.ks, "dims": self.dims, "model": fingerprint, "part": part}
        if part == "mteb":
            payload["mteb"] = self.mteb.settings()
        elif self.reranker is not None:
            payload["rerank"] = self.reranker.settings()
        if self._encode_kw:  # bf16 embeddings differ from fp32 ones; fp32 keys stay as they were
            payload["precision"] = self._encode_kw["precision"]
        h.update(json.dumps(payload, sort_keys=True).encode())
        return h.hexdigest()

    def _read_cache(self, path: Path | None) -> tuple[dict, dict] | None:
        """(metrics, units) from a cache file, or None; a corrupt file is ignored with a warning."""
        if path is None or not path.is_file():
            return None
        try:  # trusted only if metrics is a non-empty mapping of metric -> number
            data = json.loads(path.read_text(encoding="utf-8"))
            metrics, units = data["metrics"], data.get("units", {})
            if not metrics or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
            ):
                raise ValueError("metrics are not numbers")
            if not isinstance(units, dict):
                raise ValueError("units is not a mapping")
            return {str(k): float(v) for k, v in metrics.items()}, units
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            log.warning("ignoring corrupt eval cache %s; recomputing", path)
            return None

    def _write_cache(self, path: Path | None, metrics: dict, units: dict) -> None:
        if path is not None:
            atomic_write(path, json.dumps({"metrics": metrics, "units": units}))

    def evaluate(self, encoder, use_cache: bool = False) -> dict[str, float]:
        """All metrics `{"<set>/<metric>": value}`; per-unit values of the full-dim metrics go to `self.last_units`.

        With use_cache, each eval set's results (and mteb's) are reused/stashed separately, keyed by the model's
        fingerprint, the set's data and the metric settings: adding an eval set re-encodes only that set.
        `self.last_units`: {"<set>/<metric>": {"ids", "values"}} per query (retrieval) or {"ids", "scores", "gold",
        "method"} per sentence pair (STS), the input of `embedexp.eval.stats`.
        """
        cached = use_cache and self.cache_dir is not None
        self._encode_kw = self._precision_kw(encoder)
        fingerprint = encoder.fingerprint() if cached or self.mteb is not None else None
        results: dict[str, float] = {}
        units: dict[str, dict] = {}
        for s in self.sets:
            path = self.cache_dir / "eval" / f"{self._key(fingerprint, s.fingerprint)}.json" if cached else None
            hit = self._read_cache(path)
            if hit is not None:
                log.info("base-model results for %s from cache %s", s.name, path)
                metrics, set_units = hit
            else:
                t0 = time.perf_counter()
                evaluate_set = self._retrieval if isinstance(s, RetrievalSet) else self._sts
                metrics, set_units = evaluate_set(encoder, s)
                metrics = {f"{s.name}/{k}": v for k, v in metrics.items()}
                set_units = {f"{s.name}/{k}": v for k, v in set_units.items()}
                log.info("evaluated %s in %.1fs", s.name, time.perf_counter() - t0)
                self._write_cache(path, metrics, set_units)
            results.update(metrics)
            units.update(set_units)
        if self.mteb is not None:
            path = self.cache_dir / "eval" / f"{self._key(fingerprint, 'mteb')}.json" if cached else None
            hit = self._read_cache(path)
            metrics, mteb_units = hit if hit is not None else (self.mteb.run(encoder, fingerprint), None)
            if hit is None:
                mteb_units = self.mteb.last_units  # per query / pair / text of the tasks that have them
                self._write_cache(path, metrics, mteb_units)
            results.update(metrics)
            units.update(mteb_units)
        self.last_units = units
        return results

    def _precision_kw(self, encoder) -> dict:
        """encode() keyword for eval.precision on the encoder's device: {} for fp32 (any encoder works)."""
        if self.precision == "fp32":
            return {}
        device = getattr(encoder, "device", "cpu")
        resolved = resolve_inference_precision(self.precision, device, "eval.precision")
        return {} if resolved == "fp32" else {"precision": resolved}

    def texts(self) -> dict[str, dict[str, str]]:
        """{set: {unit id: text}}: query texts of retrieval sets, "sentence1 || sentence2" of STS pairs."""
        out: dict[str, dict[str, str]] = {}
        for s in self.sets:
            if isinstance(s, RetrievalSet):
                out[s.name] = dict(zip(s.query_ids, s.queries))
            else:
                out[s.name] = {str(i): f"{a} || {b}" for i, (a, b) in enumerate(zip(s.text_a, s.text_b))}
        return out

    def _retrieval(self, encoder, s: RetrievalSet) -> tuple[dict[str, float], dict[str, dict]]:
        """IR metrics of one set (top-k by exact cosine in trec_eval's order) and the full-dim per-query values."""
        q = encoder.encode(
            s.queries, "query", self.batch_size, self.show_progress, desc=f"{s.name}: queries", **self._encode_kw
        )
        d = encoder.encode(
            s.docs, "document", self.batch_size, self.show_progress, desc=f"{s.name}: corpus", **self._encode_kw
        )
        k = max(max(v) for v in self.ks.values() if v)
        out, units = {}, {}
        for dim, suffix in self._dims(q.shape[1]):
            run = retrieve(
                s.query_ids, q[:, :dim], s.doc_ids, d[:, :dim], k, ignore_identical_ids=s.ignore_identical_ids
            )
            ids, per_query = ir_metrics_per_query(run, s.qrels, **self.ks)
            out.update({f"{name}{suffix}": float(np.mean(v)) for name, v in per_query.items()})
            if not suffix:
                units = {name: {"ids": ids, "values": v} for name, v in per_query.items()}
        if self.reranker is not None:
            out.update(self.reranker.evaluate(s, q, d, self.ks))
        return out, units

    def _sts(self, encoder, s: STSSet) -> tuple[dict[str, float], dict[str, dict]]:
        a = encoder.encode(
            s.text_a, "document", self.batch_size, self.show_progress, desc=f"{s.name}: sentence1", **self._encode_kw
        )
        b = encoder.encode(
            s.text_b, "document", self.batch_size, self.show_progress, desc=f"{s.name}: sentence2", **self._encode_kw
        )
        out, units = {}, {}
        for dim, suffix in self._dims(a.shape[1]):
            cos = torch.nn.functional.cosine_similarity(a[:, :dim], b[:, :dim], dim=-1).tolist()
            out.update({f"spearman{suffix}": spearman(cos, s.scores), f"pearson{suffix}": pearson(cos, s.scores)})
            if not suffix:
                ids = [str(i) for i in range(len(cos))]
                units = {
                    m: {"ids": ids, "scores": cos, "gold": list(s.scores), "method": m} for m in ("spearman", "pearson")
                }
        return out, units

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
