"""Two-stage retrieval evaluation: the bi-encoder's top `top_k` documents per query, re-ordered by a
cross-encoder (a local sequence-classification folder, scored by the miners' CrossEncoderScorer).

Reported beside the bi-encoder's own metrics as `<set>/rerank/<metric>`, plus
`<set>/rerank/ms_per_query`: the cross-encoder's wall time over all (query, candidate) pairs divided by
the number of queries, i.e. the latency the second stage adds per query at this batch size.
Ties in cross-encoder score keep the bi-encoder order. The first stage retrieves `first_stage_depth` documents
(at least the largest metric cutoff, e.g. 100 for Recall@100) and only its top_k are re-ordered: the rest stay
below them in the first stage's order (`with_tail`), so Recall@100 of top-20 reranking is a real Recall@100.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from embedexp.errors import ConfigError, ModelError
from embedexp.eval.config import check_section
from embedexp.eval.metrics import ir_metrics, retrieve
from embedexp.eval.sets import RetrievalSet

SETTING_KEYS = ("model", "top_k", "batch_size", "max_length", "device")
Run = dict[str, list[tuple[str, float]]]  # {query id: [(doc id, score), ...]}


def first_stage_depth(top_k: int, ks: dict[str, list[int]]) -> int:
    """Documents per query a first stage must retrieve: max(top_k, every metric cutoff in `ks`)."""
    return max([top_k, *(k for cutoffs in ks.values() for k in cutoffs)])


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


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"eval.rerank.{key}={value!r}; expected a positive integer")
    return value


class Reranker:
    """Cross-encoder second stage. `scorer` (anything with CrossEncoderScorer's `score`) replaces the model, for tests."""

    def __init__(
        self,
        model: str | None = None,
        top_k: int = 100,
        batch_size: int = 32,
        max_length: int = 256,
        device: str | None = None,
        show_progress: bool = False,
        scorer=None,
    ) -> None:
        self.top_k = _positive_int("top_k", top_k)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_length = _positive_int("max_length", max_length)
        self.device = device
        self.show_progress = show_progress
        self._scorer = scorer
        self._fingerprint: str | None = None
        self.path = None
        if scorer is None:
            if not model or not isinstance(model, (str, Path)):
                raise ConfigError(f"eval.rerank.model={model!r}; expected a local sequence-classification model folder")
            path = Path(model).expanduser()
            if not (path / "config.json").is_file():
                what = "the folder does not exist" if not path.is_dir() else "not a model folder (no config.json)"
                raise ConfigError(
                    f"eval.rerank.model={str(model)!r}: {what}; expected a local sequence-classification model folder"
                )
            self.path = path

    def settings(self) -> dict:
        """What changes the reranked numbers: the model's files, top_k, truncation."""
        from embedexp.miners.cache import folder_fingerprint

        if self._fingerprint is None:
            self._fingerprint = (
                folder_fingerprint(self.path) if self.path is not None else f"scorer:{type(self._scorer).__name__}"
            )
        # v2: the first stage retrieves first_stage_depth documents and the reranked run keeps the tail
        return {"v": 2, "model": self._fingerprint, "top_k": self.top_k, "max_length": self.max_length}

    def scorer(self):
        if self._scorer is None:
            from embedexp.miners.cross_encoder import CrossEncoderScorer

            try:
                self._scorer = CrossEncoderScorer(self.path, self.max_length, self.device)
            except (ConfigError, ModelError) as e:  # its messages name the miner's key
                raise type(e)(str(e).replace("miner.model_path", "eval.rerank.model")) from None
        return self._scorer

    def rerank(
        self, run: dict[str, list[tuple[str, float]]], query_text: dict[str, str], doc_text: dict[str, str]
    ) -> tuple[dict[str, list[tuple[str, float]]], float]:
        """Re-order each query's first `top_k` candidates by cross-encoder score: (new run, scoring seconds)."""
        qids = [q for q in run if run[q]]
        cands = {q: run[q][: self.top_k] for q in qids}
        pairs_q = [query_text[q] for q in qids for _ in cands[q]]
        pairs_d = [doc_text[d] for q in qids for d, _ in cands[q]]
        t0 = time.perf_counter()
        scores = (
            self.scorer().score(pairs_q, pairs_d, self.batch_size, self.show_progress, desc="rerank") if pairs_q else []
        )
        seconds = time.perf_counter() - t0
        scores = np.asarray(scores, dtype=np.float64)
        out, start = {}, 0
        for q in qids:
            n = len(cands[q])
            s = scores[start : start + n]
            start += n
            order = np.argsort(-s, kind="stable")
            out[q] = [(cands[q][i][0], float(s[i])) for i in order]
        return out, seconds

    def evaluate(self, s: RetrievalSet, query_emb, doc_emb, ks: dict[str, list[int]]) -> dict[str, float]:
        """`rerank/<metric>` for the set (full-dim embeddings), plus `rerank/ms_per_query`: the top_k re-ordered, the
        rest of the first stage's `first_stage_depth` documents below them."""
        depth = first_stage_depth(self.top_k, ks)
        run = retrieve(s.query_ids, query_emb, s.doc_ids, doc_emb, depth, ignore_identical_ids=s.ignore_identical_ids)
        reranked, seconds = self.rerank(run, dict(zip(s.query_ids, s.queries)), dict(zip(s.doc_ids, s.docs)))
        out = {f"rerank/{k}": v for k, v in ir_metrics(with_tail(reranked, run), s.qrels, **ks).items()}
        out["rerank/ms_per_query"] = 1000.0 * seconds / max(len(s.query_ids), 1)
        return out


def from_config(cfg: dict | None, show_progress: bool = False) -> Reranker | None:
    """`eval.rerank` -> Reranker, or None when it is absent or its model is null (off)."""
    if cfg is None:
        return None
    check_section(cfg, "eval.rerank", SETTING_KEYS, "model, top_k, batch_size")
    if cfg.get("model") is None:
        return None
    return Reranker(**cfg, show_progress=show_progress)
