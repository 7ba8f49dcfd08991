"""BM25 hard negatives: Okapi exactly as rank_bm25.BM25Okapi computes it (default), or through the bm25s library.

Two backends give rank_bm25's top-k (same ids, same order, bit-identical scores):

* `reference`: the field guide's recipe: `rank_bm25.BM25Okapi(...).get_scores(query)` per query, then a
  (stable) sort of all documents.
* `fast`: the same index held as a term -> documents posting matrix (CSR) with each entry's BM25
  weight precomputed with the very float operations rank_bm25 uses; a block of queries is scored by adding,
  query token after query token, the token's postings into a dense (queries x documents) block: every
  document's score is the same sum, in the same order, as rank_bm25's. Top-k by partition; ties are
  broken by corpus order in both backends (what a stable sort of the scores gives).

A third, `bm25s`, runs the bm25s library (embedexp/miners/bm25s_backend.py; Lucene's BM25 variant unless
`miner.bm25s_method` says otherwise) on the same tokens: scores NOT identical to rank_bm25's. It stays an option, not
the default: on SciFact and NFCorpus it measured ~2x the CPU time of `fast` to index and 1.4-1.7x to query, for
the same nDCG@10 within 0.002 (docs/benchmarks.md, "BM25 backends").

A document is retrieved only with a score > 0 (see `BM25Miner._retrieved`); the zero-score tail of a top-k list
(a query of stop words only, a query that matches only its positive, terms of idf 0) is never mined.

BM25Okapi: idf(t) = ln(N - df + 0.5) - ln(df + 0.5); a negative idf is replaced by epsilon * mean idf;
score(q, d) = sum over query tokens t (repeats count) of idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl)).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import chain

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from embedexp.errors import ConfigError, DataError
from embedexp.miners.base import HardNegativeMiner, check_choice, check_int, check_number, topk_desc
from embedexp.miners.bm25s_backend import METHODS, BM25SIndex, bm25s_module, rank_bm25s
from embedexp.miners.tokenize import Tokenizer

BACKENDS = ("bm25s", "fast", "reference")
DENSE_BUDGET_BYTES = 64 << 20  # dense rows of the most frequent terms, at most this much memory


class BM25Index:
    """rank_bm25.BM25Okapi's statistics over tokenised documents, as a CSR posting matrix of weights.

    Build from token lists (`BM25Index(docs_tokens)`) or, without any per-token Python string, from int32 term
    ids (`BM25Index.from_ids(*Tokenizer.ids(texts))`); both give the same index. Memory: the postings are
    int32 document ids + float64 weights (12 bytes per distinct (term, document) pair), built in chunks of
    `CHUNK` postings, so a corpus of 10^6 documents of ~45 tokens needs well under 1 GB.
    """

    CHUNK = 1 << 22  # postings per weight-computation chunk (bounds the float64 temporaries to ~32 MB each)

    def __init__(self, docs_tokens: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> None:
        # term ids in order of first appearance: the order rank_bm25 builds (and sums) its idf table in
        vocab: defaultdict[str, int] = defaultdict()
        vocab.default_factory = vocab.__len__  # a new token gets the next id
        lens = np.fromiter(map(len, docs_tokens), dtype=np.int64, count=len(docs_tokens))
        tids = np.fromiter(
            map(vocab.__getitem__, chain.from_iterable(docs_tokens)), dtype=np.int32, count=int(lens.sum())
        )
        vocab.default_factory = None
        self._build(tids, lens, vocab, k1, b, epsilon)

    @classmethod
    def from_ids(
        cls,
        tids: np.ndarray,
        lens: np.ndarray,
        vocab: dict[str, int],
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
    ) -> "BM25Index":
        """The index of documents given as term ids (`Tokenizer.ids`): tids (sum(lens),) int32 concatenated in
        document order, lens (n_docs,) tokens per document, vocab token -> id (ids in order of first appearance,
        which is rank_bm25's idf-table order). Raises DataError for an empty corpus or one without tokens."""
        index = cls.__new__(cls)
        index._build(np.asarray(tids, dtype=np.int32), np.asarray(lens, dtype=np.int64), vocab, k1, b, epsilon)
        return index

    def _build(self, tids: np.ndarray, lens: np.ndarray, vocab: dict[str, int], k1: float, b: float, epsilon: float):
        self.k1, self.b, self.epsilon = k1, b, epsilon
        n = len(lens)
        if n == 0:
            raise DataError("BM25: the corpus is empty")
        if not vocab:
            raise DataError("BM25: every document is empty after tokenisation")
        self.vocab = vocab  # a plain mapping (no default factory)
        self.n_docs = n
        self.doc_len = lens
        self.avgdl = int(lens.sum()) / n
        # document x term counts (tf) straight from the token ids (CSR, duplicates summed), then the transpose:
        # term x document CSR with documents ascending within a term; int32 indices and counts throughout
        small = len(tids) < np.iinfo(np.int32).max  # int32 index arrays unless 2^31+ tokens (scipy's own rule)
        doc_ptr = np.zeros(n + 1, dtype=np.int32 if small else np.int64)
        np.cumsum(lens, out=doc_ptr[1:])
        by_doc = sp.csr_matrix(
            (np.ones(len(tids), dtype=np.int32), tids if small else tids.astype(np.int64), doc_ptr),
            shape=(n, len(vocab)),
        )
        by_doc.sum_duplicates()
        counts = by_doc.T.tocsr()
        del by_doc
        counts.sort_indices()
        df = np.diff(counts.indptr).astype(np.int64)
        # idf exactly as rank_bm25: math.log per value, summed in vocabulary order, negatives -> eps
        idf_of = {int(f): math.log(n - int(f) + 0.5) - math.log(int(f) + 0.5) for f in np.unique(df)}
        idf_list = [idf_of[f] for f in df.tolist()]
        idf_sum = 0.0
        for v in idf_list:
            idf_sum += v
        self.average_idf = idf_sum / len(idf_list)
        eps = epsilon * self.average_idf
        idf = np.array(idf_list, dtype=np.float64)
        idf[idf < 0] = eps
        self.idf = idf
        self.indptr = counts.indptr.astype(np.int64)
        self.indices = counts.indices  # int32 document ids (int64 past 2^31 postings)
        tf = counts.data
        del counts
        # the per-entry arithmetic of rank_bm25.get_scores, operation for operation, CHUNK postings at a time
        self.data = np.empty(len(tf), dtype=np.float64)
        for lo in range(0, len(tf), self.CHUNK):
            hi = min(len(tf), lo + self.CHUNK)
            terms = np.searchsorted(self.indptr, np.arange(lo, hi, dtype=np.int64), side="right") - 1
            q_freq = tf[lo:hi].astype(np.int64)
            doc_len = lens[self.indices[lo:hi]]
            self.data[lo:hi] = idf[terms] * (q_freq * (k1 + 1) / (q_freq + k1 * (1 - b + b * doc_len / self.avgdl)))
        del tf
        # frequent terms also as dense rows (a row add beats a scatter when a term is in >1/8 of the
        # documents); adding a 0.0 where a document lacks the term is what rank_bm25 does too
        budget = max(0, DENSE_BUDGET_BYTES // (8 * n))
        heavy = np.flatnonzero(df > n // 8)
        heavy = heavy[np.argsort(-df[heavy], kind="stable")][:budget]
        self.heavy_row = np.full(len(df), -1, dtype=np.int64)
        self.heavy_row[heavy] = np.arange(len(heavy))
        self.dense = np.zeros((len(heavy), n), dtype=np.float64)
        for h, t in enumerate(heavy.tolist()):
            lo, hi = self.indptr[t], self.indptr[t + 1]
            self.dense[h, self.indices[lo:hi]] = self.data[lo:hi]

    def token_ids(self, tokens: list[str]) -> list[int]:
        """Query tokens -> term ids, repeats kept, tokens outside the vocabulary left out (they add 0)."""
        get = self.vocab.get
        return [i for i in (get(t, -1) for t in tokens) if i >= 0]

    def score_block(self, queries: list[list[int]]) -> np.ndarray:
        """(len(queries), n_docs) float64 scores; each document's sum runs in query-token order."""
        n = self.n_docs
        out = np.zeros((len(queries), n), dtype=np.float64)
        flat = out.reshape(-1)
        lengths = np.array([len(q) for q in queries], dtype=np.int64)
        if not len(queries) or lengths.max(initial=0) == 0:
            return out
        padded = np.full((len(queries), int(lengths.max())), -1, dtype=np.int64)
        for i, q in enumerate(queries):
            padded[i, : len(q)] = q
        indptr, indices, data = self.indptr, self.indices, self.data
        for pos in range(padded.shape[1]):
            tok = padded[:, pos]
            heavy = np.where(tok >= 0, self.heavy_row[np.maximum(tok, 0)], -1)
            hrows = np.flatnonzero(heavy >= 0)
            if len(hrows):
                out[hrows] += self.dense[heavy[hrows]]  # distinct rows: a plain in-place add
            rows = np.flatnonzero((tok >= 0) & (heavy < 0))
            terms = tok[rows]
            starts, counts = indptr[terms], indptr[terms + 1] - indptr[terms]
            total = int(counts.sum())
            if total == 0:
                continue
            # positions of every posting of every selected term, concatenated
            offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            entries = offsets + np.arange(total, dtype=np.int64)
            target = np.repeat(rows * n, counts) + indices[entries]
            flat[target] += data[entries]  # one posting per (query, document) per position: no duplicates
        return out

    def score_text(self, query_tokens: list[str], doc_tokens: list[str]) -> float:
        """Score of a document that is not in the index, with the index's idf and avgdl (same arithmetic)."""
        tf = Counter(doc_tokens)
        dl = len(doc_tokens)
        k1, b = self.k1, self.b
        s = 0.0
        for t in query_tokens:
            i = self.vocab.get(t)
            if i is None:
                continue
            f = tf.get(t, 0)
            s += float(self.idf[i]) * (f * (k1 + 1) / (f + k1 * (1 - b + b * dl / self.avgdl)))
        return s


class BM25Miner(HardNegativeMiner):
    """Hard negatives from BM25 Okapi. See embedexp/miners/base.py for the filters and conf/miner/bm25.yaml."""

    kind = "bm25"

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        backend: str = "fast",
        bm25s_method: str = "lucene",
        token_pattern: str = "word",
        lowercase: bool = True,
        stopwords: str | None = "english",
        stemmer: str | None = None,
        query_batch: int = 256,
        **common,
    ) -> None:
        common.setdefault("name", "bm25")
        super().__init__(**common)
        self.k1 = check_number("miner.k1", k1, optional=False, above=0)
        self.b = check_number("miner.b", b, minimum=0, maximum=1, optional=False)
        self.epsilon = check_number("miner.epsilon", epsilon, minimum=0, optional=False)
        self.backend = check_choice("miner.backend", backend, BACKENDS)
        self.bm25s_method = check_choice("miner.bm25s_method", bm25s_method, METHODS)
        self.tokenizer = Tokenizer(token_pattern, lowercase, stopwords, stemmer)
        self.query_batch = check_int("miner.query_batch", query_batch, 1)
        if self.backend == "reference":
            _rank_bm25()
        if self.backend == "bm25s":
            bm25s_module()
        self._index: BM25Index | BM25SIndex | None = None
        self._docs_tokens: list[list[str]] | None = None

    def scorer_config(self) -> dict:
        # fast and reference give the same ranking (rank_bm25's): only bm25s' scores are part of the key
        scoring = (
            {"backend": "bm25s", "method": self.bm25s_method} if self.backend == "bm25s" else {"epsilon": self.epsilon}
        )
        return {**super().scorer_config(), "k1": self.k1, "b": self.b, **scoring, **self.tokenizer.settings()}

    def _rank(self, queries, docs, depth, pos_pairs, encoder=None):
        q_tokens = self.tokenizer.many(queries)
        if self.backend != "fast":  # bm25s and rank_bm25 take token lists
            self._docs_tokens = docs_tokens = self.tokenizer.many(docs)
        if self.backend == "bm25s":
            self._index, idx, scores, pos_scores = rank_bm25s(
                q_tokens, docs_tokens, depth, pos_pairs, self.k1, self.b, self.bm25s_method, self.show_progress
            )
            return idx, scores, pos_scores
        if self.backend == "reference":
            self._index = None
            return rank_reference(
                q_tokens, docs_tokens, depth, pos_pairs, self.k1, self.b, self.epsilon, self.show_progress
            )
        self._docs_tokens = None  # the fast index needs no token strings (int32 ids instead)
        tids, lens, vocab = self.tokenizer.ids(docs)
        self._index = index = BM25Index.from_ids(tids, lens, vocab, self.k1, self.b, self.epsilon)
        del tids
        q_ids = [index.token_ids(t) for t in q_tokens]
        nq = len(queries)
        # blocks of queries x documents kept under ~128 MB of float64
        block = max(1, min(self.query_batch, (1 << 24) // max(1, index.n_docs)))
        idx = np.empty((nq, depth), dtype=np.int64)
        scores = np.empty((nq, depth), dtype=np.float64)
        pos_scores = np.empty(len(pos_pairs), dtype=np.float64)
        with tqdm(total=nq, desc="bm25 scoring", unit="query", disable=not self.show_progress) as bar:
            for start in range(0, nq, block):
                stop = min(nq, start + block)
                s = index.score_block(q_ids[start:stop])
                idx[start:stop], scores[start:stop] = topk_desc(s, depth)
                sel = (pos_pairs[:, 0] >= start) & (pos_pairs[:, 0] < stop) if len(pos_pairs) else np.zeros(0, bool)
                pos_scores[sel] = s[pos_pairs[sel, 0] - start, pos_pairs[sel, 1]]
                bar.update(stop - start)
        return idx, scores, pos_scores

    def _retrieved(self, idx, scores, n_docs):
        """BM25 retrieves a document only with a score > 0, as Lucene/Pyserini do: a 0 means no query token
        matched (or only tokens of idf 0: df = N/2), and rank_bm25's epsilon floor can make scores negative when
        the mean idf is negative. Such candidates are top-k padding, not hard negatives."""
        with np.errstate(invalid="ignore"):
            return super()._retrieved(idx, scores, n_docs) & (np.asarray(scores, dtype=np.float64) > 0)

    def _release(self) -> None:
        self._index = None
        self._docs_tokens = None

    def _score_texts(self, queries, pairs, encoder=None):
        if self._index is None and self.backend == "bm25s":
            self._index = BM25SIndex(self._docs_tokens, self.k1, self.b, self.bm25s_method)
        elif self._index is None:
            self._index = BM25Index(self._docs_tokens, self.k1, self.b, self.epsilon)
        index = self._index
        return np.array(
            [index.score_text(self.tokenizer(queries[q]), self.tokenizer(t)) for q, t in pairs], dtype=np.float64
        )


def _rank_bm25():
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise ConfigError("miner.backend=reference needs the rank-bm25 package (pip install rank-bm25)") from None
    return BM25Okapi


def rank_reference(q_tokens, docs_tokens, depth, pos_pairs, k1=1.5, b=0.75, epsilon=0.25, show_progress=False):
    """The field guide's recipe: BM25Okapi.get_scores per query, then sort all documents (stable, so ties keep
    corpus order, like `sorted(enumerate(scores), key=..., reverse=True)`)."""
    bm25 = _rank_bm25()(docs_tokens, k1=k1, b=b, epsilon=epsilon)
    nq = len(q_tokens)
    idx = np.empty((nq, depth), dtype=np.int64)
    scores = np.empty((nq, depth), dtype=np.float64)
    pos_scores = np.empty(len(pos_pairs), dtype=np.float64)
    by_query: dict[int, list[int]] = {}
    for j, (q, _) in enumerate(np.asarray(pos_pairs).reshape(-1, 2).tolist()):
        by_query.setdefault(q, []).append(j)
    for qi in tqdm(range(nq), desc="bm25 scoring (reference)", unit="query", disable=not show_progress):
        s = bm25.get_scores(q_tokens[qi])
        order = np.argsort(-s, kind="stable")[:depth]
        idx[qi], scores[qi] = order, s[order]
        for j in by_query.get(qi, ()):
            pos_scores[j] = s[pos_pairs[j][1]]
    return idx, scores, pos_scores
