"""miner.backend=bm25s: the same top-k and scores as the bm25s library called directly, end to end through the miner."""

import numpy as np
import pytest

from embedexp.data.train_sets import TrainSet
from embedexp.miners.bm25 import BM25Miner
from embedexp.miners.tokenize import Tokenizer

bm25s = pytest.importorskip("bm25s")

DOCS = [
    "heart attack risk factors in older adults",
    "cell growth and the immune response",
    "insulin resistance raises heart disease risk",
    "brain cell growth factors",
    "the immune system and virus infection",
    "risk of virus infection in cells",
    "dna repair in brain cells",
    "insulin and brain growth",
    "heart cells and dna damage",
    "nothing relevant here at all",
]
QUERIES = ["heart risk", "brain growth factors", "virus infection risk", "insulin heart", "zzz unknown"]
POS = {0: 0, 1: 3, 2: 5, 3: 2, 4: 9}


def _direct(depth):
    """bm25s on its own: index the same tokens, retrieve, order ties by corpus index (score desc, index asc)."""
    tok = Tokenizer()
    r = bm25s.BM25()
    r.index(tok.many(DOCS), show_progress=False)
    res = r.retrieve(tok.many(QUERIES), k=depth, show_progress=False)
    idx, sc = np.asarray(res.documents), np.asarray(res.scores, dtype=np.float64)
    order = np.lexsort((idx, -sc), axis=1)
    return r, np.take_along_axis(idx, order, 1), np.take_along_axis(sc, order, 1)


def test_rank_equals_bm25s_directly():
    depth = 6
    pairs = np.array([[q, d] for q, d in POS.items()] + [[0, 4], [2, 9]])
    miner = BM25Miner(backend="bm25s", top_k=depth, cache=False, show_progress=False)
    idx, scores, pos = miner._rank(QUERIES, DOCS, depth, pairs)
    r, ref_idx, ref_sc = _direct(depth)
    assert np.array_equal(idx, ref_idx) and np.array_equal(scores, ref_sc)
    tok = Tokenizer()
    ref_pos = [float(r.get_scores(tok(QUERIES[q]))[d]) if tok(QUERIES[q]) else 0.0 for q, d in pairs.tolist()]
    np.testing.assert_array_equal(pos, np.array(ref_pos, dtype=np.float32))  # bm25s sums in float32
    assert (scores[4] == 0).all()  # a query of unknown words: every score 0 (not retrieved)


def test_score_text_matches_bm25s_for_a_corpus_document():
    """The out-of-corpus formula (bm25s' idf/tf functions with the index's df, N, avgdl) agrees with bm25s' own
    score of a document that is in the corpus."""
    from embedexp.miners.bm25s_backend import BM25SIndex

    tok = Tokenizer()
    index = BM25SIndex(tok.many(DOCS))
    for q in QUERIES[:4]:
        direct = index.retriever.get_scores(tok(q))
        for d in (0, 2, 8):
            assert index.score_text(tok(q), tok(DOCS[d])) == pytest.approx(float(direct[d]), rel=1e-5, abs=1e-6)


def test_miner_end_to_end_with_bm25s():
    corpus = {f"d{i}": t for i, t in enumerate(DOCS)}
    rows = [(QUERIES[q], DOCS[d]) for q, d in POS.items()]
    ts = TrainSet(
        ("anchor", "positive"),
        ("query", "document"),
        rows,
        info={},
        query_ids=[f"q{q}" for q in POS],
        corpus=corpus,
        qrels={f"q{q}": {f"d{d}": 1} for q, d in POS.items()},
    )
    out = BM25Miner(backend="bm25s", top_k=6, n_negatives=1, cache=False, show_progress=False).mine(ts)
    _, ref_idx, ref_sc = _direct(6)
    expected = []
    for q, d in POS.items():  # the best-ranked retrieved (score > 0) document that is not the positive
        cand = [int(j) for j, s in zip(ref_idx[q], ref_sc[q]) if s > 0 and j != d]
        if cand:
            expected.append((QUERIES[q], DOCS[d], DOCS[cand[0]]))
    assert out.columns == ("anchor", "positive", "negative_1")
    assert [tuple(r) for r in out.rows] == expected
    assert out.info["mining"]["removed"]["not_retrieved"] > 0  # the unknown-word query retrieved nothing


def test_bm25s_cache_key_and_bad_method():
    from embedexp.errors import ConfigError

    fast = BM25Miner(backend="fast", cache=False).scorer_config()
    ref = BM25Miner(backend="reference", cache=False).scorer_config()
    b = BM25Miner(backend="bm25s", cache=False).scorer_config()
    assert fast == ref and b != fast  # rank_bm25's two backends share a ranking; bm25s' differs
    with pytest.raises(ConfigError, match=r"^miner.bm25s_method='okapi'; expected one of lucene, robertson"):
        BM25Miner(backend="bm25s", bm25s_method="okapi", cache=False)
