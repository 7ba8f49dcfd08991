"""BM25 through the `bm25s` library (Lù, 2024, "BM25S: Orders of magnitude faster lexical search via eager sparse
scoring"; what mteb uses for its BM25 baseline): `miner.backend=bm25s`.

bm25s precomputes every (term, document) BM25 weight into a sparse matrix at index time ("eager" scoring) and
scores a query by summing the rows of its terms. Its default variant is Lucene's BM25 (Kamphuis et al., ECIR 2020):
idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)) (never negative), tf part tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl))
in float32. That is NOT rank_bm25's BM25Okapi (which floors negative idf at epsilon * mean idf and sums in float64):
`miner.backend=fast` / `reference` keep rank_bm25's exact scores. The tokens are ours (embedexp.miners.tokenize), so
every backend sees the same terms.

Top-k: bm25s' own selection (`BM25.retrieve`), then the k results re-ordered by score descending, ties by corpus
order; which of several documents tied exactly at the k-th score are kept is bm25s' choice.
"""

from __future__ import annotations

import numpy as np

from embedexp.errors import ConfigError

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


def bm25s_module():
    """The `bm25s` module, or a one-line ConfigError naming the option and the install command."""
    try:
        import bm25s
    except ImportError:
        raise ConfigError("miner.backend=bm25s needs the bm25s package (pip install 'bm25s>=0.2.6')") from None
    return bm25s


class BM25SIndex:
    """A `bm25s.BM25` index over pre-tokenised documents, with pair scoring for positives.

    Args:
        docs_tokens: one token list per document (our Tokenizer's output), document i is row i.
        k1, b: BM25 parameters; method: a bm25s variant (METHODS; bm25s' default "lucene").
    Raises:
        DataError-free: an empty corpus is the caller's check; ConfigError when bm25s is missing.
    """

    def __init__(self, docs_tokens: list[list[str]], k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> None:
        bm25s = bm25s_module()
        self.k1, self.b, self.method = k1, b, method
        self.n_docs = len(docs_tokens)
        self.doc_len = np.fromiter(map(len, docs_tokens), dtype=np.int64, count=self.n_docs)
        self.avgdl = float(self.doc_len.sum()) / max(1, self.n_docs)
        self.retriever = bm25s.BM25(k1=k1, b=b, method=method)
        self.retriever.index(docs_tokens, show_progress=False)
        s = self.retriever.scores
        self._data, self._indices, self._indptr = s["data"], s["indices"], s["indptr"]

    def token_ids(self, tokens: list[str]) -> list[int]:
        """Query tokens -> bm25s term ids (repeats kept, unknown tokens dropped, as bm25s does)."""
        return self.retriever.get_tokens_ids(tokens)

    def retrieve(self, q_tokens: list[list[str]], depth: int, show_progress: bool = False):
        """(indices (nq, depth) int64, scores (nq, depth) float64): bm25s' top-`depth`, score desc then corpus order."""
        res = self.retriever.retrieve(q_tokens, k=depth, sorted=True, show_progress=show_progress, n_threads=0)
        idx = np.asarray(res.documents, dtype=np.int64).reshape(len(q_tokens), depth)
        scores = np.asarray(res.scores, dtype=np.float64).reshape(len(q_tokens), depth)
        order = np.lexsort((idx, -scores), axis=1)
        return np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1)

    def pair_scores(self, q_ids: list[list[int]], pairs: np.ndarray) -> np.ndarray:
        """bm25s' score of each (query index, document index) row of `pairs` (n, 2), as float64.

        The sum, over the query's term ids (repeats count), of the document's entry in the term's column of the
        eager score matrix (0 where the document lacks the term) plus bm25s' non-occurrence term (BM25L/BM25+).
        """
        out = np.zeros(len(pairs), dtype=np.float64)
        data, indices, indptr = self._data, self._indices, self._indptr
        nonocc = self.retriever.nonoccurrence_array
        for j, (qi, d) in enumerate(np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist()):
            total = np.float32(0.0)
            for t in q_ids[qi]:
                lo, hi = int(indptr[t]), int(indptr[t + 1])
                p = lo + int(np.searchsorted(indices[lo:hi], d))
                if p < hi and indices[p] == d:
                    total += data[p]
                if nonocc is not None:
                    total += nonocc[t]
            out[j] = total
        return out

    def score_text(self, query_tokens: list[str], doc_tokens: list[str]) -> float:
        """Score of a document outside the index, with the index's df, N and avgdl (bm25s' idf/tf formulas)."""
        from bm25s.scoring import _select_idf_scorer, _select_tfc_scorer

        idf_of, tfc = _select_idf_scorer(self.method), _select_tfc_scorer(self.method)
        vocab = self.retriever.vocab_dict
        counts: dict[str, int] = {}
        for t in doc_tokens:
            counts[t] = counts.get(t, 0) + 1
        s = 0.0
        for t in query_tokens:
            i = vocab.get(t)
            if i is None:
                continue
            df = int(self._indptr[i + 1] - self._indptr[i])
            if df == 0:
                continue
            tf = np.array([counts.get(t, 0)], dtype=np.float64)
            s += idf_of(df, self.n_docs) * float(tfc(tf, len(doc_tokens), self.avgdl, self.k1, self.b, 0.5)[0])
        return s


def rank_bm25s(q_tokens, docs_tokens, depth, pos_pairs, k1=1.5, b=0.75, method="lucene", show_progress=False):
    """-> (index, indices (nq, depth), scores (nq, depth), scores of pos_pairs): the miner's `_rank` via bm25s."""
    index = BM25SIndex(docs_tokens, k1, b, method)
    idx, scores = index.retrieve(q_tokens, depth, show_progress)
    q_ids = [index.token_ids(t) for t in q_tokens]
    pos_scores = index.pair_scores(q_ids, pos_pairs)
    return index, idx, scores, pos_scores
