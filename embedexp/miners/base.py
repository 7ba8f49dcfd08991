"""Hard-negative mining shared by the bm25, dense and cross-encoder miners.

A miner ranks the corpus for every training query (`_rank`, the expensive part), then picks each row's
negatives from its query's top `top_k` candidates through the filters below (cheap). Both stages are cached
on disk: the ranking under a key of data + scorer settings + model fingerprint, the picked negatives (and the
filter statistics) under that key + the filter settings. A sweep that only changes the loss hits both; one that
changes a filter re-uses the ranking.

The rule: every mined negative is a real, distinct, retrieved candidate that is not a positive. Filters,
applied in this order to the candidates at ranks 0..top_k-1 (each count in the statistics is the number of
candidates that filter removed among those the earlier filters kept):

  not_retrieved    the scorer did not retrieve it: an index outside the corpus (e.g. faiss' -1 "no result"),
                   a score that is not finite (NaN, +-inf), and for BM25 a score <= 0 (no query term matched,
                   or only terms of idf <= 0; Lucene/Pyserini do not return such documents). `_retrieved`
                   says what each miner retrieves. When the corpus is smaller than top_k, or a query matches
                   few documents, the unretrieved tail of the top-k list is padding, never a "hard" negative.
  rank_window      ranks < skip_top                       (skip the top ranks: likely unlabelled positives)
  known_positives  the row's positive (by id or identical text) and, with exclude_positives=all, every
                   document of the query's qrels with grade > 0 (and documents with the same text)
  anchor_text      a document whose text is the anchor's (query's) own text
  duplicate_text   a document whose text equals a better-ranked retrieved candidate's (one negative per text,
                   and no copy of a candidate that the rank window or the positives removed)
  max_score        score > max_score
  margin           score > positive_score - margin        (a NaN positive score fails every candidate)
  relative_margin  score > positive_score - relative_margin * |positive_score|   (also for negative scores)

Then `n_negatives` are taken from the survivors: the best ranked (sampling=top) or a seeded random sample
(sampling=random), kept in rank order. Rows with fewer survivors are short: dropped (on_short=drop) or the
run fails (on_short=fail); the statistics count them (rows_short, queries_short) and, per filter, what was
removed (`removed`), so a query that retrieves nothing shows up as not_retrieved + rows_short.

Teacher scores (`teacher_scores=true`, any miner; meaningful for cross_encoder): the mined rows also carry the
scorer's score of the row's positive and of each chosen negative (embedexp.data.scored_rows.ScoredRows), which
reach a distillation loss as `batch["scores"]` (positive first). They come from the cached ranking (the
candidates' scores and `pos_scores`) and are stored in the "mined" cache entry, so a cache hit (and a resumed
run, whose data fingerprint includes them) trains on identical scores. For a cross-encoder they are its raw
logits (1 label) or logit[1] - logit[0] (2 labels), no sigmoid.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from embedexp.data.retrieval_view import with_retrieval_ids
from embedexp.data.scored_rows import ScoredRows
from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError
from embedexp.miners.cache import data_fingerprint, hash_json, read_cache, write_cache
from embedexp.miners.corpus_index import corpus_lookup

log = logging.getLogger("embedexp.miners")

FILTERS = (
    "not_retrieved",
    "rank_window",
    "known_positives",
    "anchor_text",
    "duplicate_text",
    "max_score",
    "margin",
    "relative_margin",
)
EXCLUDE = ("all", "pair")
SAMPLING = ("top", "random")
ON_SHORT = ("drop", "fail")


# ---------------------------------------------------------------- validation helpers
def check_int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}; expected an integer >= {minimum}")
    return value


def check_number(
    key: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    optional: bool = True,
    above: float | None = None,
) -> float | None:
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    ok = ok and (above is None or value > above)
    if not ok:
        parts = [
            f">= {minimum}" if minimum is not None else "",
            f"> {above}" if above is not None else "",
            f"<= {maximum}" if maximum is not None else "",
        ]
        rng = " and ".join(p for p in parts if p)
        raise ConfigError(
            f"{key}={value!r}; expected {'null or ' if optional else ''}a number{' ' + rng if rng else ''}"
        )
    return float(value)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}; expected one of {', '.join(choices)}")
    return value


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}; expected true or false")
    return value


# ---------------------------------------------------------------- ranking helpers
def topk_desc(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a (n, m) score matrix: score descending, ties by column ascending.

    The same order as a stable sort of -scores (and as Python's `sorted(..., reverse=True)` on
    `enumerate(scores)`). A threshold from a strided quarter of the columns (its k-th largest value is at most
    the row's k-th largest) keeps a few k candidates per row, which are then sorted exactly.
    NaN scores are treated as -inf (last; returned as -inf): a NaN threshold would select fewer than k columns
    per row and repeat one. Returns (indices (n, min(k, m)) int64, their scores); columns are distinct per row.
    """
    scores = np.asarray(scores)
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)
    n, m = scores.shape
    k = min(int(k), m)
    if k <= 0:
        return np.empty((n, 0), np.int64), np.empty((n, 0), scores.dtype)
    if 4 * k >= m:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(scores, order, axis=1)
    step = min(4, m // (2 * k))
    sub = scores[:, ::step]
    ms = sub.shape[1]
    threshold = np.partition(sub, ms - k, axis=1)[:, ms - k]
    mask = scores >= threshold[:, None]
    counts = mask.sum(axis=1)
    wide = np.flatnonzero(counts > 16 * k)  # e.g. many equal scores: use the row's exact k-th largest
    if len(wide):
        exact = np.partition(scores[wide], m - k, axis=1)[:, m - k]
        mask[wide] = scores[wide] >= exact[:, None]
        counts[wide] = mask[wide].sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cols = np.nonzero(mask)[1]  # grouped by row, ascending column within a row
    order = np.empty((n, k), np.int64)
    narrow = np.flatnonzero(counts <= 16 * k)
    if len(narrow):
        width = int(counts[narrow].max())
        pos = np.arange(width)
        valid = pos < counts[narrow][:, None]
        c = cols[np.where(valid, starts[narrow][:, None] + pos, 0)]
        key = np.where(valid, -scores[narrow[:, None], c], np.inf)  # padding sorts after every candidate
        o = np.argsort(key, axis=1, kind="stable")[:, :k]
        order[narrow] = np.take_along_axis(c, o, axis=1)
    for r in np.flatnonzero(counts > 16 * k).tolist():  # ties wider than 16k at the k-th place
        c = cols[starts[r] : starts[r] + counts[r]]
        order[r] = c[np.argsort(-scores[r, c], kind="stable")[:k]]
    return order, np.take_along_axis(scores, order, axis=1)


def filter_candidates(
    scores: np.ndarray,
    ranks: np.ndarray,
    is_positive: np.ndarray,
    positive_score: float,
    skip_top: int = 0,
    max_score: float | None = None,
    margin: float | None = None,
    relative_margin: float | None = None,
    retrieved: np.ndarray | None = None,
    is_anchor: np.ndarray | None = None,
    text_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Keep-mask over one row's candidates (rank order) and how many each filter removed (in FILTERS order).

    scores, ranks, is_positive, retrieved, is_anchor, text_ids: (top_k,) arrays for the row's candidates;
    `retrieved` (bool) defaults to "score is finite"; `text_ids` identifies equal texts (candidates with the same
    id as a better-ranked retrieved candidate are duplicates); None skips that filter. Score filters compare with
    `not (score <= threshold)`, so a NaN threshold (NaN positive score) removes every candidate.
    """
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.ones(len(scores), dtype=bool)
    removed: dict[str, int] = {}
    if retrieved is None:
        retrieved = np.isfinite(scores)
    retrieved = np.asarray(retrieved, dtype=bool)

    def apply(name: str, remove: np.ndarray | None) -> None:
        if remove is None:
            removed[name] = 0
            return
        hit = keep & remove
        removed[name] = int(hit.sum())
        keep[hit] = False

    def above(threshold: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return ~(scores <= threshold)

    apply("not_retrieved", ~retrieved)
    apply("rank_window", np.asarray(ranks) < skip_top)
    apply("known_positives", np.asarray(is_positive, dtype=bool))
    apply("anchor_text", np.asarray(is_anchor, dtype=bool) if is_anchor is not None else None)
    dup = None
    if text_ids is not None:
        dup = np.zeros(len(scores), dtype=bool)
        pos = np.flatnonzero(retrieved)
        _, first = np.unique(np.asarray(text_ids)[pos], return_index=True)
        dup[pos] = True
        dup[pos[first]] = False
    apply("duplicate_text", dup)
    apply("max_score", above(max_score) if max_score is not None else None)
    apply("margin", above(positive_score - margin) if margin is not None else None)
    apply(
        "relative_margin",
        above(positive_score - relative_margin * abs(positive_score)) if relative_margin is not None else None,
    )
    return keep, removed


class HardNegativeMiner:
    """Base class; subclasses implement `_rank` (and `_score_texts` for positives outside the corpus)."""

    kind = "base"

    def __init__(
        self,
        name: str | None = None,
        n_negatives: int = 1,
        top_k: int = 50,
        skip_top: int = 0,
        exclude_positives: str = "all",
        margin: float | None = None,
        relative_margin: float | None = None,
        max_score: float | None = None,
        sampling: str = "top",
        seed: int = 0,
        on_short: str = "drop",
        cache: bool = True,
        cache_dir: str | None = None,
        show_progress: bool = True,
        teacher_scores: bool = False,
    ) -> None:
        self.name = name or self.kind
        self.n_negatives = check_int("miner.n_negatives", n_negatives, 1)
        self.top_k = check_int("miner.top_k", top_k, 1)
        self.skip_top = check_int("miner.skip_top", skip_top, 0)
        if self.skip_top >= self.top_k:
            raise ConfigError(f"miner.skip_top={skip_top!r}; expected an integer < miner.top_k={top_k}")
        if self.top_k - self.skip_top < self.n_negatives:
            raise ConfigError(
                f"miner.n_negatives={n_negatives!r}; expected at most the rank window's size "
                f"miner.top_k - miner.skip_top = {self.top_k - self.skip_top}"
            )
        self.exclude_positives = check_choice("miner.exclude_positives", exclude_positives, EXCLUDE)
        self.margin = check_number("miner.margin", margin, minimum=0)
        self.relative_margin = check_number("miner.relative_margin", relative_margin, minimum=0, maximum=1)
        self.max_score = check_number("miner.max_score", max_score)
        self.sampling = check_choice("miner.sampling", sampling, SAMPLING)
        self.seed = check_int("miner.seed", seed, 0)
        self.on_short = check_choice("miner.on_short", on_short, ON_SHORT)
        self.cache = check_bool("miner.cache", cache)
        if self.cache and not cache_dir:
            raise ConfigError("miner.cache_dir is empty; set a folder or miner.cache=false")
        self.cache_dir = cache_dir
        self.show_progress = check_bool("miner.show_progress", show_progress)
        self.teacher_scores = check_bool("miner.teacher_scores", teacher_scores)

    # ---------------------------------------------------------------- for subclasses
    @property
    def needs_encoder(self) -> bool:
        """True when `mine` must be given the encoder being trained (train.py passes it)."""
        return False

    def scorer_config(self) -> dict:
        """Everything that changes the ranking (part of the cache key)."""
        return {"kind": self.kind, "top_k": self.top_k}

    def model_fingerprint(self, encoder=None) -> str | None:
        return None

    def _rank(self, queries: list[str], docs: list[str], depth: int, pos_pairs: np.ndarray, encoder=None):
        """-> (indices (nq, depth) int, scores (nq, depth) float, scores of pos_pairs[:, 0] x pos_pairs[:, 1])."""
        raise NotImplementedError

    def _score_texts(self, queries: list[str], pairs: list[tuple[int, str]], encoder=None) -> np.ndarray:
        """Scores of (query index, text) pairs for positives that are not in the corpus."""
        raise NotImplementedError

    def _retrieved(self, idx: np.ndarray, scores: np.ndarray, n_docs: int) -> np.ndarray:
        """Which of `_rank`'s candidates the scorer really retrieved: (n, k) bool, same shape as idx/scores.

        Default: an index inside the corpus (0 <= idx < n_docs) with a finite score. BM25 also needs score > 0.
        """
        idx = np.asarray(idx)
        with np.errstate(invalid="ignore"):
            return (idx >= 0) & (idx < n_docs) & np.isfinite(np.asarray(scores, dtype=np.float64))

    def _release(self) -> None:
        """Drop the index / embeddings / models that scoring built (the miner may outlive mining)."""

    # ---------------------------------------------------------------- configuration identity
    def filter_config(self) -> dict:
        cfg = {
            "n_negatives": self.n_negatives,
            "skip_top": self.skip_top,
            "exclude_positives": self.exclude_positives,
            "margin": self.margin,
            "relative_margin": self.relative_margin,
            "max_score": self.max_score,
            "sampling": self.sampling,
            "on_short": self.on_short,
        }
        if self.sampling == "random":
            cfg["seed"] = self.seed
        return cfg

    # ---------------------------------------------------------------- mining
    def mine(self, train_set: TrainSet, encoder=None) -> TrainSet:
        train_set = with_retrieval_ids(train_set)  # pairs/table rows: corpus = their texts, as ST's miner
        if train_set.corpus is None or train_set.query_ids is None or train_set.qrels is None:
            raise ConfigError(
                f"miner={self.name} needs retrieval data: a BEIR folder or (anchor, positive[, negatives]) rows; "
                f"this data has columns {train_set.columns}"
            )
        if self.needs_encoder and encoder is None:
            raise ConfigError(
                f"miner={self.name}: no miner.model is set, so it mines with the model being trained; "
                "pass that encoder to mine(train_set, encoder=...) or set a model in the miner config"
            )
        t_start = time.perf_counter()
        doc_ids = list(train_set.corpus)
        docs = list(train_set.corpus.values())
        if not docs:
            raise ConfigError(f"miner={self.name}: the corpus is empty")
        canon, id_to_idx, text_to_idx = corpus_lookup(
            doc_ids,
            docs,
            (d for qid in set(train_set.query_ids) for d in train_set.qrels.get(qid, {})),
            (t for row in train_set.rows for t in row[:2]),
        )

        q_index: dict[str, int] = {}
        queries: list[str] = []
        row_q = np.empty(len(train_set.rows), dtype=np.int64)
        row_pos = np.empty(len(train_set.rows), dtype=np.int64)
        for r, (qid, row) in enumerate(zip(train_set.query_ids, train_set.rows)):
            if qid not in q_index:
                q_index[qid] = len(queries)
                queries.append(row[0])
            row_q[r] = q_index[qid]
            pos = next(
                (id_to_idx[d] for d in train_set.qrels.get(qid, {}) if d in id_to_idx and docs[id_to_idx[d]] == row[1]),
                None,
            )
            row_pos[r] = pos if pos is not None else text_to_idx.get(row[1], -1)
        depth = min(self.top_k, len(docs))

        model_fp = self.model_fingerprint(encoder)
        score_key = hash_json({"data": data_fingerprint(train_set), "scorer": self.scorer_config(), "model": model_fp})
        full_key = hash_json({"scoring": score_key, "filters": self.filter_config()})

        if self.cache:
            hit = read_cache(self.cache_dir, full_key, "mined")
            ok = hit is not None and len(hit["negatives"]) == len(train_set.rows)
            if ok and self.teacher_scores and len(hit.get("teacher_scores") or ()) != len(train_set.rows):
                ok = False  # an entry written before teacher scores were cached: re-select (the ranking is cached)
            if ok:
                stats = {**hit["stats"], "cache": "hit", "seconds": {"total": round(time.perf_counter() - t_start, 3)}}
                log.info("miner=%s: cache hit (%s)", self.name, full_key)
                self._release()
                return self._output(train_set, docs, hit["negatives"], stats, hit.get("teacher_scores"))

        cand = read_cache(self.cache_dir, score_key, "candidates") if self.cache else None
        if cand is not None and len(cand["pos_scores"]) == len(train_set.rows) and len(cand["indices"]) == len(queries):
            idx = np.asarray(cand["indices"], dtype=np.int64).reshape(len(queries), -1)
            scores = np.asarray(cand["scores"], dtype=np.float64).reshape(len(queries), -1)
            pos_scores = np.asarray(cand["pos_scores"], dtype=np.float64)
            cache_state, t_score = "candidates", 0.0
            self._release()
            log.info("miner=%s: re-using the cached ranking (%s)", self.name, score_key)
        else:
            t0 = time.perf_counter()
            in_corpus = row_pos >= 0
            pairs = (
                np.unique(np.stack([row_q[in_corpus], row_pos[in_corpus]], axis=1), axis=0)
                if in_corpus.any()
                else np.empty((0, 2), np.int64)
            )
            try:
                idx, scores, pair_scores = self._rank(queries, docs, depth, pairs, encoder)
                idx = np.asarray(idx, dtype=np.int64)
                scores = np.asarray(scores, dtype=np.float64)
                pos_scores = np.empty(len(train_set.rows), dtype=np.float64)
                lookup = {
                    (int(q), int(d)): float(s) for (q, d), s in zip(pairs, np.asarray(pair_scores, dtype=np.float64))
                }
                for r in np.flatnonzero(in_corpus):
                    pos_scores[r] = lookup[(int(row_q[r]), int(row_pos[r]))]
                outside = np.flatnonzero(~in_corpus)
                if len(outside):
                    extra = self._score_texts(
                        queries, [(int(row_q[r]), train_set.rows[r][1]) for r in outside], encoder
                    )
                    pos_scores[outside] = np.asarray(extra, dtype=np.float64)
            finally:
                self._release()
            t_score = time.perf_counter() - t0
            cache_state = "miss" if self.cache else "off"
            if self.cache:
                write_cache(
                    self.cache_dir,
                    score_key,
                    "candidates",
                    {
                        "scorer": self.scorer_config(),
                        "model": model_fp,
                        "indices": idx.tolist(),
                        "scores": scores.tolist(),
                        "pos_scores": pos_scores.tolist(),
                    },
                )

        t0 = time.perf_counter()
        query_text = np.fromiter(
            (text_to_idx.get(row[0], -2) for row in train_set.rows), dtype=np.int64, count=len(train_set.rows)
        )  # -2: the anchor's text is not a document
        negatives, stats, teacher = self._select(
            train_set, docs, canon, id_to_idx, row_q, row_pos, idx, scores, pos_scores, query_text
        )
        stats.update(
            {
                "cache": cache_state,
                "seconds": {
                    "scoring": round(t_score, 3),
                    "filtering": round(time.perf_counter() - t0, 3),
                    "total": round(time.perf_counter() - t_start, 3),
                },
            }
        )
        if self.cache:
            write_cache(
                self.cache_dir,
                full_key,
                "mined",
                {
                    "scoring_key": score_key,
                    "filters": self.filter_config(),
                    "negatives": negatives,
                    "teacher_scores": teacher,
                    "stats": stats,
                },
            )
        return self._output(train_set, docs, negatives, stats, teacher)

    def _select(self, train_set, docs, canon, id_to_idx, row_q, row_pos, idx, scores, pos_scores, query_text):
        """Each row's negatives (corpus indices, or None for a short row), the statistics, and each row's
        scorer scores (None for a short row): [positive's score, each chosen negative's score].

        idx, scores: (n_queries, depth) from `_rank`; pos_scores: (n_rows,); query_text: (n_rows,) the canonical
        corpus index of each row's anchor text (-2 when the anchor's text is not a document).
        """
        n_rows, depth = len(train_set.rows), idx.shape[1]
        known: dict[str, np.ndarray] = {}
        for qid, rels in train_set.qrels.items():
            known[qid] = np.array(
                sorted({int(canon[id_to_idx[d]]) for d, g in rels.items() if g > 0 and d in id_to_idx}), dtype=np.int64
            )
        ranks = np.arange(depth)
        removed = {f: 0 for f in FILTERS}
        rng = np.random.default_rng(self.seed)
        negatives: list[list[int] | None] = []
        teacher: list[list[float] | None] = []  # the scorer's scores of the positive and the chosen negatives
        short_rows, short_queries, positives_retrieved = 0, set(), 0
        retrieved = self._retrieved(idx, scores, len(docs))
        # the canonical (first) corpus index of each candidate's text; -1 for an unretrieved candidate
        cand_text = np.where(retrieved, canon[np.clip(idx, 0, len(docs) - 1)], -1)
        for r in range(n_rows):
            qi, qid = int(row_q[r]), train_set.query_ids[r]
            cand, ct, ok = idx[qi], cand_text[qi], retrieved[qi]
            drop = [known.get(qid, np.empty(0, np.int64))] if self.exclude_positives == "all" else []
            if row_pos[r] >= 0:
                drop.append(np.array([canon[row_pos[r]]], dtype=np.int64))
                positives_retrieved += bool((ok & (cand == row_pos[r])).any())
            is_pos = np.isin(ct, np.concatenate(drop)) & ok if drop else np.zeros(depth, bool)
            keep, rem = filter_candidates(
                scores[qi],
                ranks,
                is_pos,
                float(pos_scores[r]),
                self.skip_top,
                self.max_score,
                self.margin,
                self.relative_margin,
                retrieved=ok,
                is_anchor=(ct == query_text[r]) & ok,
                text_ids=ct,
            )
            for f, c in rem.items():
                removed[f] += c
            eligible = np.flatnonzero(keep)
            if len(eligible) < self.n_negatives:
                short_rows += 1
                short_queries.add(qi)
                negatives.append(None)
                teacher.append(None)
                continue
            if self.sampling == "top":
                chosen = eligible[: self.n_negatives]
            else:
                chosen = np.sort(rng.choice(eligible, self.n_negatives, replace=False))
            negatives.append(cand[chosen].tolist())
            teacher.append([float(pos_scores[r]), *(float(x) for x in scores[qi][chosen])])
        stats = {
            "miner": self.name,
            "scorer": self.scorer_config(),
            "filters": self.filter_config(),
            "queries": len(np.unique(row_q)),
            "rows_in": n_rows,
            "rows_out": n_rows - short_rows,
            "candidates": int(n_rows * depth),
            "removed": removed,
            "positives_in_top_k": int(positives_retrieved),
            "candidates_retrieved": int(retrieved[row_q].sum()),
            "queries_none_retrieved": int((~retrieved.any(axis=1)).sum()),
            "rows_short": short_rows,
            "queries_short": len(short_queries),
            "rows_dropped": short_rows,
        }
        removed_txt = ", ".join(f"{k}={v}" for k, v in removed.items())
        log.info(
            "miner=%s: %d queries, %d rows x %d candidates; removed by filter: %s",
            self.name,
            stats["queries"],
            n_rows,
            depth,
            removed_txt,
        )
        log.info(
            "miner=%s: %d rows (%d queries) got fewer than %d negatives%s",
            self.name,
            short_rows,
            len(short_queries),
            self.n_negatives,
            " and were dropped" if short_rows else "",
        )
        if short_rows and self.on_short == "fail":
            raise ConfigError(
                f"miner.on_short=fail: {short_rows} of {n_rows} rows ({len(short_queries)} queries) got fewer than "
                f"miner.n_negatives={self.n_negatives} negatives after the filters (removed: {removed_txt}); "
                "relax the filters, raise miner.top_k, or set miner.on_short=drop"
            )
        if short_rows == n_rows:
            raise ConfigError(
                f"miner={self.name}: no row got miner.n_negatives={self.n_negatives} negatives after the filters "
                f"(removed: {removed_txt}); relax the filters or raise miner.top_k"
            )
        return negatives, stats, teacher

    def _output(
        self, train_set: TrainSet, docs: list[str], negatives: list, stats: dict, teacher: list | None = None
    ) -> TrainSet:
        """The mined training set: (anchor, positive, negative_1..n) for the rows that got n negatives; with
        `teacher_scores`, rows that carry the scorer's scores of the positive and each negative (ScoredRows)."""
        keep = [r for r, n in enumerate(negatives) if n is not None]
        rows = [train_set.rows[r][:2] + tuple(docs[d] for d in negatives[r]) for r in keep]
        n = self.n_negatives
        info = {**train_set.info, "miner": self.name, "mining": stats}
        if self.teacher_scores:
            rows = ScoredRows(rows, [teacher[r] for r in keep])
            info["teacher_scores"] = f"miner={self.name}"
        return TrainSet(
            train_set.columns[:2] + tuple(f"negative_{i + 1}" for i in range(n)),
            train_set.kinds[:2] + ("document",) * n,
            rows,
            labels=[train_set.labels[r] for r in keep] if train_set.labels is not None else None,
            info=info,
            query_ids=[train_set.query_ids[r] for r in keep],
            corpus=train_set.corpus,
            qrels=train_set.qrels,
        )
