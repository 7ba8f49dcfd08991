"""The rule every miner's output obeys (issue 14, item 5).

Every mined negative is a real, distinct, *retrieved* candidate that is not a positive:

* real: a document of the corpus (no padding index, no -1 from faiss, no index past the corpus);
* retrieved: the scorer returned it with a finite score, and for BM25 a score > 0 (Lucene/Pyserini only
  return documents that match a query term; a 0 from rank_bm25 means "no query term matched", or only terms
  of idf 0); the cross-encoder only re-scores what its candidate stage retrieved; the random miner's "retrieval"
  is a uniform draw from the corpus' distinct texts;
* distinct: one negative per text (documents with the same text under different ids count once);
* not a positive: not the row's positive, not a graded positive of the query (exclude_positives=all), not a
  document with one of their texts, and not the anchor's own text.

Rows that get fewer than n_negatives such candidates are short (on_short applies) and the statistics count them.
References: rank_bm25.BM25Okapi (scores), a hand-worked BM25 example, numpy brute force (dense), a stable
argsort (top-k order), and an independent re-statement of the rule (`reference_rows`).
"""

from __future__ import annotations

import gzip
import json
import math
import random
import zlib

import numpy as np
import pytest
import rank_bm25

from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError
from embedexp.miners import BM25Miner, CrossEncoderMiner, DenseMiner, HardNegativeMiner, RandomNegativeMiner
from embedexp.miners.base import FILTERS, topk_desc
from embedexp.miners.tokenize import Tokenizer


def make_set(docs, queries, positives, grades=None, doc_ids=None):
    """TrainSet of (query, positive) rows; positives: {query index: [doc index, ...]} (grade 1 unless given)."""
    ids = doc_ids or [f"d{i}" for i in range(len(docs))]
    corpus = dict(zip(ids, docs))
    qrels = {f"q{q}": {ids[d]: (grades or {}).get((q, d), 1) for d in ds} for q, ds in positives.items()}
    rows, qids = [], []
    for q, ds in positives.items():
        for d in ds:
            if qrels[f"q{q}"][ids[d]] > 0:
                rows.append((queries[q], docs[d]))
                qids.append(f"q{q}")
    return TrainSet(
        ("anchor", "positive"), ("query", "document"), rows, info={}, query_ids=qids, corpus=corpus, qrels=qrels
    )


# ---------------------------------------------------------------- BM25: the example, worked by hand
HAND_DOCS = ["heart attack risk", "cell heart", "cell growth", "cell risk factors", "insulin resistance", "the end"]
HAND_QUERIES = ["what is the", "insulin", "cell", "heart risk"]  # stop words only / only its positive / idf 0 / normal
HAND_POS = {0: [5], 1: [4], 2: [2], 3: [0]}


def test_hand_worked_bm25_scores_match_rank_bm25():
    """The example's scores by hand (N=6, avgdl=13/6, k1=1.5, b=0.75), checked against rank_bm25.BM25Okapi."""
    toks = Tokenizer("word", True, "english").many(HAND_DOCS)
    ref = rank_bm25.BM25Okapi(toks)
    avgdl = 13 / 6

    def w(idf, tf, dl):
        return idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * dl / avgdl))

    idf_heart = math.log(6 - 2 + 0.5) - math.log(2 + 0.5)  # ln 1.8 = 0.5878
    idf_cell = math.log(6 - 3 + 0.5) - math.log(3 + 0.5)  # df = N/2: idf exactly 0
    idf_once = math.log(5.5) - math.log(1.5)  # 1.2993
    assert idf_cell == 0.0
    expect = {
        "what is the": [0.0] * 6,  # no token left after stop words
        "insulin": [0, 0, 0, 0, w(idf_once, 1, 2), 0],  # 1.3459: only the positive matches
        "cell": [0.0] * 6,  # matched by d1, d2, d3, but with idf 0
        "heart risk": [w(idf_heart, 1, 3) * 2, w(idf_heart, 1, 2), 0, w(idf_heart, 1, 3), 0, 0],  # 1.0021 .6089 .5011
    }
    for q, e in expect.items():
        np.testing.assert_allclose(ref.get_scores(Tokenizer("word", True, "english")(q)), e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_bm25_unretrieved_candidates_are_not_hard_negatives(backend):
    """Before the fix (both backends): negatives ['heart attack risk', 'heart attack risk', 'heart attack risk',
    'cell heart'], rows_short 0 -- the first document of the corpus (score 0) was the "hard" negative of the three
    queries that retrieve nothing but their positive. After: only q3 keeps a row (its negative 'cell heart', score
    0.6089 by hand), 3 rows are short, and not_retrieved counts 6 + 5 + 6 + 3 = 20 candidates."""
    ts = make_set(HAND_DOCS, HAND_QUERIES, HAND_POS)
    out = BM25Miner(backend=backend, top_k=10, n_negatives=1, cache=False, show_progress=False).mine(ts)
    assert out.rows == [("heart risk", "heart attack risk", "cell heart")]
    st = out.info["mining"]
    assert (st["rows_in"], st["rows_out"], st["rows_short"], st["queries_short"]) == (4, 1, 3, 3)
    assert st["removed"]["not_retrieved"] == 20
    assert st["removed"]["known_positives"] == 2  # q1's and q3's positives (q0's and q2's were not retrieved)
    assert st["positives_in_top_k"] == 2  # retrieved positives only
    with pytest.raises(ConfigError, match=r"^miner.on_short=fail: 3 of 4 rows .*not_retrieved=20"):
        BM25Miner(backend=backend, top_k=10, on_short="fail", cache=False, show_progress=False).mine(ts)


def test_bm25_only_unretrieved_rows_is_one_clear_error():
    ts = make_set(HAND_DOCS, HAND_QUERIES, {0: [5], 2: [2]})  # stop words only; idf 0
    with pytest.raises(ConfigError, match=r"^miner=bm25: no row got miner.n_negatives=1 .*not_retrieved=12") as e:
        BM25Miner(top_k=10, cache=False, show_progress=False).mine(ts)
    assert "\n" not in str(e.value)


def test_bm25_epsilon_idf_can_make_scores_negative_and_those_are_not_retrieved():
    """rank_bm25 replaces a negative idf by epsilon * mean idf; when the mean idf is negative (terms in most
    documents) the 'floor' is negative and so are the scores: such documents are not retrieved."""
    docs = ["a b", "a b", "a b c", "a b", "a"]
    toks = [d.split() for d in docs]
    ref = rank_bm25.BM25Okapi(toks)
    s = ref.get_scores(["a", "b"])
    assert ref.average_idf < 0 and (s < 0).all()  # the reference: every score negative
    ts = make_set(docs, ["a b", "c"], {0: [4], 1: [2]})
    miner = BM25Miner(
        top_k=5, token_pattern="whitespace", lowercase=False, stopwords="none", cache=False, show_progress=False
    )
    with pytest.raises(ConfigError, match="no row got"):
        miner.mine(ts)  # before: 'a b' mined for q0 with score -0.08, counted as found


# ---------------------------------------------------------------- top-k with NaN / inf
def test_topk_desc_with_nan_is_a_stable_sort_with_nan_last():
    """Reference: np.argsort(-s, kind='stable') with NaN as -inf (numpy already sorts NaN last). Before the fix a
    row with NaN came back as one column repeated k times (e.g. [3, 3, 3, 3, 3] with a finite score)."""
    rng = np.random.default_rng(0)
    s = rng.standard_normal((5, 200))
    s[0] = np.nan
    s[1, ::2] = np.nan
    s[2, 5:] = -np.inf
    s[3, :7] = np.inf
    for k in (3, 5, 60, 200):
        idx, vals = topk_desc(s, k)
        key = np.where(np.isnan(s), -np.inf, s)
        ref = np.argsort(-key, axis=1, kind="stable")[:, :k]
        assert np.array_equal(idx, ref), k
        assert all(len(set(r)) == k for r in idx.tolist())  # distinct columns
        got, want = vals, np.take_along_axis(key, ref, 1)
        assert np.array_equal(got, want)


# ---------------------------------------------------------------- stub scorer: padding indices and bad scores
class StubMiner(HardNegativeMiner):
    """Fixed candidate lists and scores (what a scorer could hand back), to test the selection rule alone."""

    kind = "stub"

    def __init__(self, idx, scores, pos_scores, **kw):
        super().__init__(**{"cache": False, "show_progress": False, **kw})
        self.idx, self.scores, self.pos = np.array(idx), np.array(scores, float), np.array(pos_scores, float)

    def _rank(self, queries, docs, depth, pos_pairs, encoder=None):
        return self.idx[:, :depth], self.scores[:, :depth], self.pos[: len(pos_pairs)]


def test_padding_indices_and_nonfinite_scores_are_not_retrieved():
    """-1 (faiss' "no result"), an index past the corpus, NaN, -inf and +inf are not retrieved candidates.
    Before: the -1 was mined as the last document, NaN/inf candidates were mined, the stats said 0 short."""
    docs = [f"doc {i}" for i in range(8)]
    ts = make_set(docs, ["q zero"], {0: [0]})
    idx = [[-1, 8, 1, 2, 3, 4, 5]]
    scores = [[-3.4e38, 5.0, np.nan, -np.inf, np.inf, 1.0, 0.5]]
    out = StubMiner(idx, scores, [9.0], top_k=7, n_negatives=2).mine(ts)
    assert out.rows == [("q zero", "doc 0", "doc 4", "doc 5")]
    assert out.info["mining"]["removed"]["not_retrieved"] == 5
    with pytest.raises(ConfigError, match="no row got miner.n_negatives=3"):
        StubMiner(idx, scores, [9.0], top_k=7, n_negatives=3).mine(ts)


def test_nan_positive_score_fails_every_margin():
    """A margin against a NaN positive score cannot be checked: the candidates fail it (before: all passed,
    since every comparison with NaN is False)."""
    docs = [f"doc {i}" for i in range(4)]
    ts = make_set(docs, ["q"], {0: [0]})
    stub = dict(idx=[[1, 2, 3]], scores=[[3.0, 2.0, 1.0]], pos_scores=[np.nan], top_k=3)
    for key in ("margin", "relative_margin"):
        with pytest.raises(ConfigError, match=rf"no row got .*{key}=3"):
            StubMiner(**stub, **{key: 0.1}).mine(ts)


def test_duplicate_texts_and_the_anchor_text_are_not_negatives():
    """Same text under two ids is one candidate (the better ranked); a document equal to the query is not a
    negative. Before: ['doc 1', 'doc 1'] (d1 and its copy d2) and the anchor's own text were mined."""
    docs = ["pos", "doc 1", "doc 1", "q zero", "doc 4", "doc 5"]
    ts = make_set(docs, ["q zero"], {0: [0]})
    idx = [[3, 1, 2, 4, 5]]
    out = StubMiner(idx, [[5.0, 4.0, 4.0, 3.0, 2.0]], [9.0], top_k=5, n_negatives=2).mine(ts)
    assert out.rows == [("q zero", "pos", "doc 1", "doc 4")]
    rem = out.info["mining"]["removed"]
    assert (rem["anchor_text"], rem["duplicate_text"]) == (1, 1)
    # a copy of a candidate removed by the rank window is a copy of a likely positive too
    out = StubMiner(idx, [[5.0, 4.0, 4.0, 3.0, 2.0]], [9.0], top_k=5, skip_top=2, n_negatives=2).mine(ts)
    assert out.rows == [("q zero", "pos", "doc 4", "doc 5")]
    # sampling=random samples distinct texts too
    for seed in range(10):
        row = (
            StubMiner(idx, [[5.0, 4.0, 4.0, 3.0, 2.0]], [9.0], top_k=5, n_negatives=3, sampling="random", seed=seed)
            .mine(ts)
            .rows[0]
        )
        assert sorted(row[2:]) == ["doc 1", "doc 4", "doc 5"]


def test_filter_counts_add_up():
    """Per row: candidates = sum(removed) + survivors; the stats' counts add up over rows."""
    docs = ["pos", "doc 1", "doc 1", "q zero", "doc 4", "doc 5", "doc 6", "doc 7"]  # 8 documents: depth 8
    ts = make_set(docs, ["q zero"], {0: [0]})
    idx = [[0, 3, 1, 2, -1, 4, 5, 6]]
    sc = [[9.0, 5.0, 4.0, 4.0, 0.0, np.nan, 2.0, 1.0]]
    out = StubMiner(idx, sc, [9.0], top_k=8, n_negatives=1, skip_top=1).mine(ts)
    st = out.info["mining"]
    assert list(st["removed"]) == list(FILTERS)
    assert st["removed"] == {
        "not_retrieved": 2,
        "rank_window": 1,
        "known_positives": 0,
        "anchor_text": 1,
        "duplicate_text": 1,
        "max_score": 0,
        "margin": 0,
        "relative_margin": 0,
    }
    assert st["candidates"] - sum(st["removed"].values()) == 3  # doc 1, doc 5, doc 6 survive


# ---------------------------------------------------------------- dense: NaN embeddings
class NanEncoder:
    """Deterministic random unit vectors per (kind, text); NaN for texts containing 'nan'."""

    def encode(self, texts, kind="document", batch_size=64, show_progress=False, desc=None):
        import torch

        out = []
        for t in texts:
            v = np.random.default_rng(zlib.crc32(f"{kind}|{t}".encode())).standard_normal(8).astype(np.float32)
            out.append(np.full(8, np.nan, np.float32) if "nan" in t else v / np.linalg.norm(v))
        return torch.from_numpy(np.stack(out))

    def fingerprint(self) -> str:
        return "nan-encoder"


@pytest.mark.parametrize("use_faiss", [False, True])
def test_dense_nan_embeddings_are_not_retrieved(use_faiss):
    """Before: with faiss, the NaN query's 'negatives' were the last document twice (faiss' -1 labels); with
    numpy, a NaN block made topk_desc repeat one column. After: only finite-scored documents, distinct."""
    if use_faiss:
        pytest.importorskip("faiss")
    docs = [f"document {i}" + (" nan" if i % 3 == 0 else "") for i in range(40)]
    queries = ["query a", "query nan", "query c"]
    ts = make_set(docs, queries, {0: [1], 1: [2], 2: [4]})
    out = DenseMiner(top_k=40, n_negatives=2, use_faiss=use_faiss, cache=False, show_progress=False).mine(
        ts, encoder=NanEncoder()
    )
    assert out.query_ids == ["q0", "q2"]
    enc = NanEncoder()
    q = enc.encode(queries, "query").numpy().astype(np.float64)
    d = enc.encode(docs, "document").numpy().astype(np.float64)
    full = q @ d.T  # brute force reference
    for row, qi, pos in zip(out.rows, [0, 2], [1, 4]):
        s = np.where(np.isfinite(full[qi]), full[qi], -np.inf)
        order = [j for j in np.argsort(-s, kind="stable") if np.isfinite(s[j]) and j != pos]
        assert list(row[2:]) == [docs[j] for j in order[:2]]
    st = out.info["mining"]
    assert st["rows_short"] == 1 and st["removed"]["not_retrieved"] == 14 + 40 + 14


# ---------------------------------------------------------------- cross-encoder: only re-scores what was retrieved
class HashScorer:
    """A stand-in cross-encoder: a fixed pseudo-random score per (query, document); NaN for texts with 'nan'."""

    def __init__(self):
        self.pairs = []

    def score(self, queries, docs, batch_size=32, show_progress=False, desc=None):
        self.pairs += list(zip(queries, docs))
        return np.array(
            [np.nan if "nan" in d else (zlib.crc32(f"{q}|{d}".encode()) % 1000) / 100.0 for q, d in zip(queries, docs)],
            dtype=np.float64,
        )


def _ce_miner(tmp_path, monkeypatch, **kw):
    (tmp_path / "config.json").write_text("{}")
    scorer = HashScorer()
    monkeypatch.setattr(CrossEncoderMiner, "scorer", lambda self: scorer)
    miner = CrossEncoderMiner(model_path=str(tmp_path), cache=False, show_progress=False, **kw)
    return miner, scorer


def test_cross_encoder_keeps_only_candidates_its_first_stage_retrieved(tmp_path, monkeypatch):
    """Before: the BM25 stage's zero-score documents were re-scored and mined ('cell growth', 'cell risk factors',
    ... for the stop-word query); after: a query whose BM25 stage retrieves nothing but its positive is short."""
    ts = make_set(HAND_DOCS, HAND_QUERIES, HAND_POS)
    miner, scorer = _ce_miner(tmp_path, monkeypatch, n_candidates=6, top_k=6, n_negatives=1)
    out = miner.mine(ts)
    assert out.query_ids == ["q3"]
    assert out.rows[0][2] in ("cell heart", "cell risk factors")  # the two documents BM25 retrieved for q3
    rescored = {(q, d) for q, d in scorer.pairs}
    assert ("what is the", "heart attack risk") not in rescored  # unretrieved candidates are not even scored
    assert out.info["mining"]["rows_short"] == 3


def test_cross_encoder_nan_scores_are_not_retrieved(tmp_path, monkeypatch):
    docs = ["heart nan", "heart cell", "heart risk nan", "heart gene", "heart"]
    ts = make_set(docs, ["heart"], {0: [4]})
    miner, _ = _ce_miner(tmp_path, monkeypatch, n_candidates=5, top_k=5, n_negatives=2)
    out = miner.mine(ts)
    assert sorted(out.rows[0][2:]) == ["heart cell", "heart gene"]
    assert out.info["mining"]["removed"]["not_retrieved"] == 2


# ---------------------------------------------------------------- random
def test_random_miner_rule_and_short_rows():
    """Random's 'retrieval' is a uniform draw from the corpus' distinct texts. Before: the copy 'b' (d2) of the
    positive's text was mined, two copies of 'c' could fill one row, the anchor's own text was mined, and a row
    without enough distinct texts was not reported (q0 has 3 texts left, a c d: with n_negatives=4 it is short,
    q1 has 4 left and is not; before, both rows got 4 'negatives')."""
    docs = ["a", "b", "b", "c", "c", "query one", "d"]
    queries = ["query one", "query two"]
    ts = make_set(docs, queries, {0: [1], 1: [0, 6]}, grades={(1, 6): 0})
    assert ts.query_ids == ["q0", "q1"]
    ts.labels = [0.5, 0.7]
    for seed in range(30):
        out = RandomNegativeMiner(n_negatives=2, seed=seed).mine(ts)
        for qid, row in zip(out.query_ids, out.rows):
            negs = row[2:]
            assert len(set(negs)) == 2 and row[0] not in negs and row[1] not in negs
            assert not set(negs) & {ts.corpus[d] for d, g in ts.qrels[qid].items() if g > 0}
    short = RandomNegativeMiner(n_negatives=4, seed=0).mine(ts)  # q0: a, c, d -> 3 distinct texts left
    assert short.query_ids == ["q1"] and short.labels == [0.7]
    st = short.info["mining"]
    assert (st["rows_in"], st["rows_out"], st["rows_short"], st["queries_short"]) == (2, 1, 1, 1)
    with pytest.raises(ConfigError, match=r"^miner.on_short=fail: 1 of 2 rows"):
        RandomNegativeMiner(n_negatives=4, on_short="fail").mine(ts)
    with pytest.raises(ConfigError, match=r"^miner=random: no row got miner.n_negatives=5"):
        RandomNegativeMiner(n_negatives=5).mine(ts)


# ---------------------------------------------------------------- the rule, property-style, for every miner
WORDS = ["heart", "cell", "gene", "risk", "the", "of", "virus", "dna", "brain", "is", "nanog"]  # 'nan': NaN vectors


def random_case(seed):
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    n_docs = rng.randint(3, 25)  # often smaller than top_k
    docs = [text(1, 6) for _ in range(n_docs)]
    for _ in range(rng.randint(0, 3)):  # same text under another id
        docs[rng.randrange(n_docs)] = docs[rng.randrange(n_docs)]
    queries = [text(1, 3) for _ in range(rng.randint(2, 5))]
    queries[0] = "the of is"  # stop words only
    if rng.random() < 0.5:
        docs[rng.randrange(n_docs)] = queries[1]  # the anchor's own text in the corpus
    positives = {q: rng.sample(range(n_docs), rng.randint(1, min(2, n_docs))) for q in range(len(queries))}
    return docs, queries, make_set(docs, queries, positives)


def reference_rows(ts, ranked, n, skip_top=0):
    """The rule restated: ranked[qid] = [(doc id, retrieved?)...] in rank order (top_k of them)."""
    rows, short = [], 0
    for qid, row in zip(ts.query_ids, ts.rows):
        bad = {ts.corpus[d] for d, g in ts.qrels[qid].items() if g > 0} | {row[1], row[0]}
        seen, negs = set(), []
        for rank, (d, ok) in enumerate(ranked[qid]):
            if not ok:
                continue
            t = ts.corpus[d]
            if rank >= skip_top and t not in bad and t not in seen:
                negs.append(t)
            seen.add(t)
        if len(negs) >= n:
            rows.append(row + tuple(negs[:n]))
        else:
            short += 1
    return rows, short


def bm25_ranked(ts, top_k, tok=None):
    tok = tok or Tokenizer("word", True, "english")
    ids = list(ts.corpus)
    ref = rank_bm25.BM25Okapi(tok.many(list(ts.corpus.values())))
    out = {}
    for qid, row in zip(ts.query_ids, ts.rows):
        s = ref.get_scores(tok(row[0]))
        out[qid] = [(ids[j], s[j] > 0) for j in np.argsort(-s, kind="stable")[:top_k]]
    return out


def check_mined(out, ts, expect_rows, expect_short):
    assert out.rows == expect_rows
    st = out.info["mining"]
    assert (st["rows_in"], st["rows_out"], st["rows_short"]) == (len(ts.rows), len(expect_rows), expect_short)


def mine_or_none(miner, ts, **kw):
    try:
        return miner.mine(ts, **kw)
    except ConfigError as e:
        assert str(e).startswith(f"miner={miner.name}: no row got"), str(e)
        return None


@pytest.mark.parametrize("seed", range(40))
def test_rule_holds_for_every_miner_on_random_corpora(seed, tmp_path, monkeypatch):
    docs, queries, ts = random_case(seed)
    n = 1 + seed % 2
    skip = seed % 3 == 2
    # bm25, both backends, against rank_bm25 + the rule
    for backend in ("fast", "reference"):
        out = mine_or_none(
            BM25Miner(backend=backend, top_k=10, n_negatives=n, skip_top=int(skip), cache=False, show_progress=False),
            ts,
        )
        rows, short = reference_rows(ts, bm25_ranked(ts, 10), n, int(skip))
        if out is None:
            assert rows == []
        else:
            check_mined(out, ts, rows, short)
    # dense, against brute force
    enc = NanEncoder()
    ids = list(ts.corpus)
    q = enc.encode(queries, "query").numpy().astype(np.float64)
    d = enc.encode(docs, "document").numpy().astype(np.float64)
    ranked = {}
    for qid, row in zip(ts.query_ids, ts.rows):
        s = q[queries.index(row[0])] @ d.T
        ranked[qid] = [(ids[j], bool(np.isfinite(s[j]))) for j in np.argsort(-s, kind="stable")[:10]]
    rows, short = reference_rows(ts, ranked, n)
    out = mine_or_none(DenseMiner(top_k=10, n_negatives=n, cache=False, show_progress=False), ts, encoder=enc)
    if out is None:
        assert rows == []
    else:
        check_mined(out, ts, rows, short)
    # cross-encoder over bm25 candidates (a stand-in scorer)
    miner, scorer = _ce_miner(tmp_path, monkeypatch, n_candidates=12, top_k=8, n_negatives=n)
    cand = bm25_ranked(ts, 12)
    ranked = {}
    for qid, row in zip(ts.query_ids, ts.rows):
        kept = [(ids.index(did), did) for did, ok in cand[qid] if ok]
        s = {j: float(scorer.score([row[0]], [ts.corpus[did]])[0]) for j, did in kept}
        order = sorted((j for j in s if np.isfinite(s[j])), key=lambda j: (-s[j], j))[:8]
        ranked[qid] = [(ids[j], True) for j in order]
    rows, short = reference_rows(ts, ranked, n)
    out = mine_or_none(miner, ts)
    if out is None:
        assert rows == []
    else:
        check_mined(out, ts, rows, short)
    # random: distinct, from the corpus, not a positive's text, not the anchor's text; short iff too few texts
    out = mine_or_none(RandomNegativeMiner(n_negatives=n, seed=seed), ts)
    texts = set(ts.corpus.values())
    expect_short = 0
    for qid, row in zip(ts.query_ids, ts.rows):
        bad = {ts.corpus[x] for x, g in ts.qrels[qid].items() if g > 0} | {row[0], row[1]}
        expect_short += len(texts - bad) < n
    if out is None:
        assert expect_short == len(ts.rows)
        return
    assert out.info["mining"]["rows_short"] == expect_short
    for qid, row in zip(out.query_ids, out.rows):
        bad = {ts.corpus[x] for x, g in ts.qrels[qid].items() if g > 0} | {row[0], row[1]}
        negs = row[2:]
        assert len(negs) == n == len(set(negs)) and set(negs) <= texts and not set(negs) & bad


# ---------------------------------------------------------------- cache
def test_results_mined_under_the_old_rule_are_not_served(tmp_path):
    """A cache file from before the rule change (format version 1) must be recomputed, not served."""
    ts = make_set(HAND_DOCS, HAND_QUERIES, HAND_POS)
    kw = dict(top_k=10, cache_dir=str(tmp_path), show_progress=False)
    first = BM25Miner(**kw).mine(ts)
    for f in tmp_path.glob("*.json.gz"):  # what the old code wrote: version 1, zero-score "hard" negatives
        obj = json.loads(gzip.decompress(f.read_bytes()))
        obj["version"] = 1
        if obj["kind"] == "mined":
            obj["negatives"] = [[0], [0], [0], [1]]
            obj["stats"]["rows_short"] = 0
        f.write_bytes(gzip.compress(json.dumps(obj).encode()))
    again = BM25Miner(**kw).mine(ts)
    assert again.info["mining"]["cache"] == "miss" and again.rows == first.rows
