"""Hard-negative miners: bm25 fast == reference, dense == brute force, cross-encoder order, filters, cache."""

from __future__ import annotations

import gzip
import json
import logging
import random
import zlib

import numpy as np
import pytest

from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError
from embedexp.miners import BM25Miner, CrossEncoderMiner, DenseMiner, HardNegativeMiner, RandomNegativeMiner
from embedexp.miners.base import FILTERS, filter_candidates, topk_desc
from embedexp.miners.bm25 import BM25Index, rank_reference
from embedexp.miners.tokenize import Tokenizer

try:
    import rank_bm25
except ImportError:  # only the comparisons with the reference need it
    rank_bm25 = None
needs_rank_bm25 = pytest.mark.skipif(rank_bm25 is None, reason="rank-bm25 is not installed")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: one thread avoids thread-pool contention on a shared CPU (seconds -> milliseconds)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WORDS = [
    "Heart",
    "heart",
    "cell",
    "cells",
    "the",
    "of",
    "protein",
    "gene",
    "The",
    "and",
    "risk",
    "virus",
    "DNA",
    "dna",
    "in",
    "mouse",
    "tumour",
    "is",
    "a",
    "blood",
    "insulin",
    "brain",
    "not",
    "with",
    "immune",
]


def random_corpus(seed: int, n_docs: int, n_queries: int, vocab: int = len(WORDS)):
    rng = random.Random(seed)
    words = WORDS[:vocab]

    def text(lo, hi):
        toks = [rng.choice(words) + rng.choice(["", "", "", ",", "."]) for _ in range(rng.randint(lo, hi))]
        return " ".join(toks)

    docs = [text(0 if i % 17 == 5 else 1, 30) for i in range(n_docs)]
    docs[3 % n_docs] = docs[1 % n_docs]  # an exact duplicate: equal scores, tie broken by corpus order
    queries = [text(0 if i == 2 else 1, 8) + (" zzz-unknown" if i % 3 == 0 else "") for i in range(n_queries)]
    return docs, queries


def make_set(docs: list[str], queries: list[str], positives: dict[int, list[int]], grades=None) -> TrainSet:
    corpus = {f"d{i}": t for i, t in enumerate(docs)}
    qrels = {f"q{q}": {f"d{d}": (grades or {}).get((q, d), 1) for d in ds} for q, ds in positives.items()}
    rows, qids = [], []
    for q, ds in positives.items():
        for d in ds:
            if qrels[f"q{q}"][f"d{d}"] > 0:
                rows.append((queries[q], docs[d]))
                qids.append(f"q{q}")
    return TrainSet(
        ("anchor", "positive"), ("query", "document"), rows, info={}, query_ids=qids, corpus=corpus, qrels=qrels
    )


TOKENIZERS = [
    dict(token_pattern="whitespace", lowercase=False, stopwords="none"),  # the field guide's doc.split()
    dict(token_pattern="word", lowercase=True, stopwords="english"),
    dict(token_pattern="word", lowercase=False, stopwords="english"),
    dict(token_pattern="whitespace", lowercase=True, stopwords="none"),
]


# ---------------------------------------------------------------- bm25
@needs_rank_bm25
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tok", TOKENIZERS, ids=["guide", "word-lower-stop", "word-case-stop", "ws-lower"])
def test_bm25_fast_equals_reference(seed, tok):
    docs, queries = random_corpus(seed, n_docs=120 + 40 * seed, n_queries=25, vocab=8 + 8 * seed)
    t = Tokenizer(tok["token_pattern"], tok["lowercase"], tok["stopwords"])
    d_tok, q_tok = t.many(docs), t.many(queries)
    index = BM25Index(d_tok)
    ref = rank_bm25.BM25Okapi(d_tok)
    assert index.average_idf == ref.average_idf
    fast_scores = index.score_block([index.token_ids(q) for q in q_tok])
    for qi, q in enumerate(q_tok):  # bit-identical scores for every document
        assert np.array_equal(fast_scores[qi], ref.get_scores(q))
    pairs = np.array([[qi, (7 * qi) % len(docs)] for qi in range(len(queries))])
    for depth in (10, 60, len(docs)):  # argpartition path, full-sort path, whole corpus
        miner = BM25Miner(**tok, top_k=depth, cache=False, show_progress=False)
        f_idx, f_sc, f_pos = miner._rank(queries, docs, depth, pairs)
        r_idx, r_sc, r_pos = rank_reference(q_tok, d_tok, depth, pairs)
        assert np.array_equal(f_idx, r_idx)
        assert np.array_equal(f_sc, r_sc) and np.array_equal(f_pos, r_pos)
        # the guide's sort: sorted(enumerate(scores), key=score, reverse=True)
        for qi in (0, 1, 2):
            guide = [i for i, _ in sorted(enumerate(ref.get_scores(q_tok[qi])), key=lambda x: x[1], reverse=True)][
                :depth
            ]
            assert f_idx[qi].tolist() == guide


@needs_rank_bm25
def test_bm25_backends_mine_identically(tmp_path):
    # all 25 words: with 12, every term is in most documents, rank_bm25's idf and so every score is < 0 (nothing
    # is retrieved; see tests/test_mined_negatives.py)
    docs, queries = random_corpus(5, n_docs=150, n_queries=20, vocab=len(WORDS))
    ts = make_set(docs, queries, {q: [q, q + 20] for q in range(20)})
    kw = dict(top_k=30, skip_top=2, n_negatives=3, margin=0.1, cache=False, show_progress=False)
    fast = BM25Miner(backend="fast", **kw).mine(ts)
    ref = BM25Miner(backend="reference", **kw).mine(ts)
    assert fast.rows == ref.rows and len(fast.rows) > 0
    assert fast.info["mining"]["removed"] == ref.info["mining"]["removed"]
    assert fast.info["mining"]["removed"]["not_retrieved"] > 0  # the zero-score tail of some queries
    assert fast.columns == ("anchor", "positive", "negative_1", "negative_2", "negative_3")
    assert fast.kinds == ("query", "document", "document", "document", "document")


@needs_rank_bm25
def test_bm25_epsilon_floor_for_negative_idf():
    docs = ["a a b", "a c", "a d", "a b e", "f"]  # 'a' in 4 of 5 documents: negative idf -> epsilon * mean idf
    toks = [d.split() for d in docs]
    index, ref = BM25Index(toks, epsilon=0.5), rank_bm25.BM25Okapi(toks, epsilon=0.5)
    assert index.idf[index.vocab["a"]] == ref.idf["a"] == 0.5 * ref.average_idf
    assert np.array_equal(
        index.score_block([[index.vocab["a"], index.vocab["b"], index.vocab["a"]]])[0], ref.get_scores(["a", "b", "a"])
    )


def test_bm25_score_of_a_text_matches_the_index():
    docs, queries = random_corpus(3, n_docs=50, n_queries=5)
    toks = [d.split() for d in docs]
    index = BM25Index(toks)
    q = queries[1].split()
    s = index.score_block([index.token_ids(q)])[0]
    assert all(index.score_text(q, toks[j]) == s[j] for j in range(len(docs)))


def test_positive_outside_the_corpus_is_scored_from_its_text():
    docs, queries = random_corpus(4, n_docs=60, n_queries=1, vocab=len(WORDS))
    outside = "heart cell protein gene heart"
    t = Tokenizer("word", True, "none")
    index = BM25Index(t.many(docs))
    pos = index.score_text(t(queries[0]), t(outside))
    s = index.score_block([index.token_ids(t(queries[0]))])[0]
    margin = max(0.0, pos - float(np.median(s)))
    ts = TrainSet(
        ("anchor", "positive"),
        ("query", "document"),
        [(queries[0], outside)],
        query_ids=["q0"],
        corpus={f"d{i}": d for i, d in enumerate(docs)},
        qrels={"q0": {"dx": 1}},
    )
    out = BM25Miner(top_k=60, margin=margin, stopwords="none", cache=False, show_progress=False).mine(ts)
    # one count per distinct text: docs[3] is a copy of docs[1] (removed as duplicate_text before the margin)
    assert out.info["mining"]["removed"]["margin"] == len({docs[j] for j in np.flatnonzero(s > pos - margin)}) > 0
    order = np.argsort(-s, kind="stable")
    assert out.rows[0][2] == docs[next(j for j in order if 0 < s[j] <= pos - margin)]


def test_topk_desc_is_a_stable_sort():
    rng = np.random.default_rng(0)
    cases = [(50, 3, 5), (50, 20, 5), (7, 7, 5), (400, 10, 5), (400, 10, 2), (1000, 5, 1000), (1000, 7, 10**6)]
    for m, k, levels in cases:
        s = rng.integers(0, levels, size=(30, m)).astype(np.float64)  # few levels: many ties
        s[3] = 0.0  # a row of equal scores (a query without any known token)
        s[4, ::7] = 9e9  # more than 16k ties at the top
        for a in (s, s.astype(np.float32)):
            idx, vals = topk_desc(a, k)
            ref = np.argsort(-a, axis=1, kind="stable")[:, :k]
            assert np.array_equal(idx, ref) and np.array_equal(vals, np.take_along_axis(a, ref, 1))


def test_tokenizer_options():
    assert Tokenizer("whitespace", False, "none")("The cat, the Dog") == ["The", "cat,", "the", "Dog"]
    assert Tokenizer("word", True, "english")("The cat, the Dog") == ["cat", "dog"]
    assert Tokenizer("word", False, "english")("The cat, the Dog") == ["cat", "Dog"]


def test_stemmer_without_a_package_is_a_config_error():
    try:
        import Stemmer  # noqa: F401

        pytest.skip("PyStemmer installed")
    except ImportError:
        pass
    try:
        import nltk  # noqa: F401

        pytest.skip("nltk installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=r"^miner.stemmer='porter'"):
        BM25Miner(stemmer="porter", cache=False)


# ---------------------------------------------------------------- dense
class FakeEncoder:
    """Deterministic random embeddings per (kind, text): checks that queries/documents use their kind."""

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim
        self.kinds: list[str] = []

    def encode(self, texts, kind="document", batch_size=64, show_progress=False, desc=None):
        import torch

        self.kinds.append(kind)
        out = []
        for t in texts:
            rng = np.random.default_rng(zlib.crc32(f"{kind}|{t}".encode()))
            v = rng.standard_normal(self.dim).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return torch.from_numpy(np.stack(out))

    def fingerprint(self) -> str:
        return "fake"


@pytest.mark.parametrize("use_faiss", [False, True])
def test_dense_equals_brute_force(use_faiss):
    if use_faiss:
        pytest.importorskip("faiss")
    docs = [f"document number {i}" for i in range(300)]
    queries = [f"query {i}" for i in range(40)]
    enc = FakeEncoder()
    miner = DenseMiner(top_k=25, use_faiss=use_faiss, query_chunk=7, cache=False, show_progress=False)
    assert miner.needs_encoder
    pairs = np.array([[q, 3 * q] for q in range(40)])
    idx, scores, pos = miner._rank(queries, docs, 25, pairs, encoder=enc)
    assert enc.kinds == ["query", "document"]
    q = enc.encode(queries, "query").numpy()
    d = enc.encode(docs, "document").numpy()
    full = q.astype(np.float64) @ d.T.astype(np.float64)
    ref = np.argsort(-full, axis=1, kind="stable")[:, :26]
    assert np.diff(np.take_along_axis(full, ref, 1), axis=1).max() < -1e-5  # no near-ties: float32 order is exact
    ref = ref[:, :25]
    assert np.array_equal(idx, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(full, ref, 1), atol=1e-5)
    np.testing.assert_allclose(pos, full[pairs[:, 0], pairs[:, 1]], atol=1e-5)


def test_dense_with_a_real_encoder_uses_prefixes(tiny_model_dir):
    from embedexp.models import Encoder

    enc = Encoder(str(tiny_model_dir), query_prefix="query: ", document_prefix="passage: ", max_seq_length=32)
    docs = [f"cells and genes {i} " + "protein " * (i % 5) for i in range(30)]
    queries = ["which gene", "protein in cells", "heart risk"]
    ts = make_set(docs, queries, {0: [1], 1: [2], 2: [3]})
    mined = DenseMiner(top_k=10, n_negatives=2, batch_size=8, cache=False, show_progress=False).mine(ts, encoder=enc)
    q = enc.encode(queries, kind="query", batch_size=8).numpy()  # prefixes applied by kind
    d = enc.encode(docs, kind="document", batch_size=8).numpy()
    order = np.argsort(-(q @ d.T), axis=1, kind="stable")
    for row, qi in zip(mined.rows, [0, 1, 2]):
        expect = [docs[j] for j in order[qi] if j != qi + 1][:2]
        assert list(row[2:]) == expect


def test_dense_needs_the_encoder_when_no_model_is_set():
    ts = make_set(["a b", "c d", "e f"], ["a"], {0: [0]})
    with pytest.raises(ConfigError, match="miner.model"):
        DenseMiner(top_k=2, cache=False).mine(ts)


# ---------------------------------------------------------------- cross-encoder
@pytest.fixture(scope="module")
def tiny_cross_encoder(tiny_model_dir, tmp_path_factory):
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("models") / "tiny-ce"
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1
    )
    BertForSequenceClassification(cfg).save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tiny_model_dir / f, path / f)
    return path


def test_cross_encoder_rescoring_order(tiny_cross_encoder):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    docs, queries = random_corpus(7, n_docs=20, n_queries=3, vocab=len(WORDS))
    miner = CrossEncoderMiner(
        model_path=str(tiny_cross_encoder), n_candidates=12, top_k=8, batch_size=1, cache=False, show_progress=False
    )
    pairs = np.array([[0, 5], [2, 1]])
    idx, scores, pos = miner._rank(queries, docs, 8, pairs)
    cand, bm25, _ = BM25Miner(top_k=12, cache=False, show_progress=False)._rank(
        queries, docs, 12, np.empty((0, 2), int)
    )
    tok = AutoTokenizer.from_pretrained(str(tiny_cross_encoder))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_cross_encoder)).eval()

    def direct(q, d):
        with torch.inference_mode():
            return float(model(**tok([q], [d], truncation=True, max_length=256, return_tensors="pt")).logits[0, 0])

    assert 0 < (bm25 > 0).sum() < bm25.size  # some candidates the BM25 stage did not retrieve (score 0)
    for qi in range(3):
        # only what BM25 retrieved is re-scored; the rest is not retrieved (-inf), last, in corpus order
        s = {int(j): direct(queries[qi], docs[j]) if b > 0 else -np.inf for j, b in zip(cand[qi], bm25[qi])}
        expect = sorted(s, key=lambda j: (-s[j], j))[:8]  # score desc, ties by corpus order
        assert idx[qi].tolist() == expect
        np.testing.assert_allclose(scores[qi], [s[j] for j in expect], rtol=0, atol=1e-6)
    np.testing.assert_allclose(pos, [direct(queries[0], docs[5]), direct(queries[2], docs[1])], atol=1e-6)
    # batched scoring (padding) agrees with one-pair batches
    batched = CrossEncoderMiner(
        model_path=str(tiny_cross_encoder), n_candidates=12, top_k=8, batch_size=16, cache=False, show_progress=False
    )._rank(queries, docs, 8, pairs)
    np.testing.assert_allclose(np.sort(batched[1], axis=1), np.sort(scores, axis=1), atol=1e-5)


# ---------------------------------------------------------------- filters
def test_each_filter_removes_what_its_rule_says():
    scores = np.array([10.0, 9.0, 8.0, 7.0, 6.0, 5.0])
    ranks = np.arange(6)
    none = np.zeros(6, bool)

    def run(**kw):
        keep, removed = filter_candidates(scores, ranks, kw.pop("is_pos", none), kw.pop("pos", 8.5), **kw)
        return np.flatnonzero(~keep).tolist(), removed

    assert run() == ([], {f: 0 for f in FILTERS})
    assert run(skip_top=2) == ([0, 1], {**{f: 0 for f in FILTERS}, "rank_window": 2})
    assert run(is_pos=np.array([0, 1, 0, 0, 1, 0], bool))[0] == [1, 4]
    assert run(max_score=8.0)[0] == [0, 1]  # strictly above max_score
    assert run(margin=1.0)[0] == [0, 1, 2]  # > 8.5 - 1 = 7.5
    assert run(margin=1.5)[0] == [0, 1, 2]  # > 7.0; 7.0 itself stays
    assert run(relative_margin=0.1)[0] == [0, 1, 2]  # > 8.5 - 0.85 = 7.65
    assert run(relative_margin=0.2)[0] == [0, 1, 2, 3]  # > 6.8
    # negative scores: the threshold is positive - r * |positive|, below the positive
    neg = np.array([-1.0, -2.5, -3.0, -4.0])
    keep, removed = filter_candidates(neg, np.arange(4), np.zeros(4, bool), -2.0, relative_margin=0.5)
    assert np.flatnonzero(~keep).tolist() == [0, 1] and removed["relative_margin"] == 2  # > -3.0
    keep, removed = filter_candidates(neg, np.arange(4), np.zeros(4, bool), -2.0, margin=0.5)
    assert np.flatnonzero(~keep).tolist() == [0] and removed["margin"] == 1  # > -2.5; -2.5 itself stays


def test_margin_keeps_the_boundary():
    keep, _ = filter_candidates(np.array([-1.0, -2.5, -3.0]), np.arange(3), np.zeros(3, bool), -2.0, margin=0.5)
    assert keep.tolist() == [False, True, True]


def test_combined_filters_count_in_order():
    scores = np.array([10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    is_pos = np.array([1, 0, 0, 1, 0, 0, 0], bool)
    keep, removed = filter_candidates(
        scores, np.arange(7), is_pos, 8.0, skip_top=1, max_score=9.5, margin=1.0, relative_margin=0.2
    )
    # rank 0 (window), rank 3 (positive), 9.0 (> 7.0 margin; max_score 9.5 keeps it), 8.0 (margin), 6.0 (> 6.4? no)
    zero = {"not_retrieved": 0, "anchor_text": 0, "duplicate_text": 0}  # filters this call does not use
    assert removed == {
        **zero,
        "rank_window": 1,
        "known_positives": 1,
        "max_score": 0,
        "margin": 2,
        "relative_margin": 0,
    }
    assert np.flatnonzero(keep).tolist() == [4, 5, 6]
    keep, removed = filter_candidates(scores, np.arange(7), is_pos, 8.0, max_score=8.5, relative_margin=0.25)
    assert removed == {
        **zero,
        "rank_window": 0,
        "known_positives": 2,
        "max_score": 1,
        "margin": 0,
        "relative_margin": 1,
    }
    assert np.flatnonzero(keep).tolist() == [4, 5, 6]


class StubMiner(HardNegativeMiner):
    """Fixed candidate lists: query q ranks documents `ranking[q]` with `score_of[doc]`."""

    kind = "stub"

    def __init__(self, ranking, score_of, **kw):
        super().__init__(**{"cache": False, "show_progress": False, **kw})
        self.ranking, self.score_of = ranking, score_of
        self.calls = 0

    def _rank(self, queries, docs, depth, pos_pairs, encoder=None):
        self.calls += 1
        idx = np.array([r[:depth] for r in self.ranking])
        return (
            idx,
            np.vectorize(self.score_of.get)(idx).astype(float),
            np.array([self.score_of[d] for _, d in pos_pairs], float),
        )


def _stub_data():
    docs = [f"doc {i}" for i in range(10)]
    docs[9] = docs[2]  # same text as doc 2 (a positive of q0)
    ts = make_set(docs, ["q zero", "q one"], {0: [2, 4], 1: [6]}, grades={(0, 4): 1})
    ts.qrels["q0"]["d7"] = 0  # grade 0: not a positive
    ranking = [[2, 9, 0, 4, 1, 7, 3, 5], [6, 0, 1, 3, 5, 8, 2, 4]]
    score_of = {i: 10.0 - i for i in range(10)}
    score_of[9] = 8.0
    return ts, ranking, score_of


def test_mine_applies_filters_per_row():
    ts, ranking, score_of = _stub_data()
    m = StubMiner(ranking, score_of, top_k=8, n_negatives=2, exclude_positives="all")
    out = m.mine(ts)
    # row (q0, d2): drop d2, d9 (same text as d2) and d4 (other positive) -> d0, d1
    # row (q0, d4): same -> d0, d1 ; row (q1, d6): drop d6 -> d0, d1
    negs = [[r[2], r[3]] for r in out.rows]
    assert negs == [["doc 0", "doc 1"]] * 3
    assert out.info["mining"]["removed"]["known_positives"] == 3 + 3 + 1
    pair = StubMiner(ranking, score_of, top_k=8, n_negatives=2, exclude_positives="pair").mine(ts)
    # q0/d4 with pair: d2 is allowed, d9 (same text as d2) is not a second negative (distinct texts, issue 14)
    assert [[r[2], r[3]] for r in pair.rows] == [["doc 0", "doc 4"], ["doc 2", "doc 0"], ["doc 0", "doc 1"]]
    assert pair.info["mining"]["removed"]["duplicate_text"] == 1
    # margin on the row's positive score: q0/d2 has 8.0 -> keep <= 7.0 ; q0/d4 has 6.0 -> keep <= 5.0
    mm = StubMiner(ranking, score_of, top_k=8, n_negatives=1, margin=1.0).mine(ts)
    assert [r[2] for r in mm.rows] == ["doc 7", "doc 7", "doc 8"]


def test_short_rows_are_dropped_or_fail():
    ts, ranking, score_of = _stub_data()
    # q1's positive d6 scores 4.0: margin 1.0 leaves d8 (2.0) only; q0 rows keep plenty
    m = StubMiner(ranking, score_of, top_k=8, n_negatives=2, margin=1.0)
    out = m.mine(ts)
    st = out.info["mining"]
    assert (st["rows_in"], st["rows_out"], st["rows_short"], st["queries_short"]) == (3, 2, 1, 1)
    assert out.query_ids == ["q0", "q0"] and len(out.rows) == 2
    with pytest.raises(ConfigError, match=r"^miner.on_short=fail: 1 of 3 rows"):
        StubMiner(ranking, score_of, top_k=8, n_negatives=2, margin=1.0, on_short="fail").mine(ts)


def test_random_sampling_is_seeded_and_within_the_window():
    ts, ranking, score_of = _stub_data()
    kw = dict(top_k=8, skip_top=1, n_negatives=2, sampling="random")
    a = StubMiner(ranking, score_of, seed=1, **kw).mine(ts).rows
    b = StubMiner(ranking, score_of, seed=1, **kw).mine(ts).rows
    assert a == b
    seen = set()
    for seed in range(20):
        for row in StubMiner(ranking, score_of, seed=seed, **kw).mine(ts).rows[2:]:  # q1: window ranks 1..7
            assert set(row[2:]) <= {f"doc {i}" for i in (0, 1, 3, 5, 8, 2, 4)}
            seen.update(row[2:])
    assert len(seen) > 2


# ---------------------------------------------------------------- cache
def test_cache_hit_skips_scoring(tmp_path, monkeypatch, caplog):
    docs, queries = random_corpus(11, n_docs=80, n_queries=10, vocab=15)
    ts = make_set(docs, queries, {q: [q] for q in range(10)})
    kw = dict(top_k=20, n_negatives=2, cache_dir=str(tmp_path / "mining"), show_progress=False)
    first = BM25Miner(**kw).mine(ts)
    assert first.info["mining"]["cache"] == "miss"
    assert len(list((tmp_path / "mining").glob("*.json.gz"))) == 2  # ranking + mined rows

    def boom(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(BM25Miner, "_rank", boom)
    again = BM25Miner(**kw).mine(ts)  # e.g. a sweep that only changes the loss
    assert again.rows == first.rows and again.info["mining"]["cache"] == "hit"
    assert again.info["mining"]["removed"] == first.info["mining"]["removed"]
    other = BM25Miner(**{**kw, "skip_top": 3}).mine(ts)  # a filter change re-uses the ranking
    assert other.info["mining"]["cache"] == "candidates" and other.rows != first.rows
    with pytest.raises(AssertionError, match="scored again"):
        BM25Miner(**{**kw, "k1": 1.2}).mine(ts)  # a scoring change does not
    ts2 = make_set(docs[:-1] + ["something else"], queries, {q: [q] for q in range(10)})
    with pytest.raises(AssertionError, match="scored again"):
        BM25Miner(**kw).mine(ts2)  # nor does a data change
    monkeypatch.undo()
    # a corrupt file is ignored with a warning, and recomputed
    for f in (tmp_path / "mining").glob("*.json.gz"):
        f.write_bytes(b"not gzip")
    with caplog.at_level(logging.WARNING, logger="embedexp.miners"):
        fixed = BM25Miner(**kw).mine(ts)
    assert fixed.rows == first.rows and fixed.info["mining"]["cache"] == "miss"
    assert "unreadable" in caplog.text
    # a truncated gzip and a wrong-key file too
    f = next(iter(sorted((tmp_path / "mining").glob("*.json.gz"))))
    f.write_bytes(gzip.compress(json.dumps({"version": 1, "key": "other"}).encode())[:-3])
    assert BM25Miner(**kw).mine(ts).rows == first.rows
    assert not list((tmp_path / "mining").glob(".*.tmp"))


def test_cache_key_uses_the_model_fingerprint(tmp_path):
    ts = make_set([f"document {i}" for i in range(30)], ["query a", "query b"], {0: [1], 1: [2]})
    kw = dict(top_k=10, cache_dir=str(tmp_path), show_progress=False)
    a = DenseMiner(**kw).mine(ts, encoder=FakeEncoder())
    enc = FakeEncoder()
    enc.fingerprint = lambda: "another model"
    b = DenseMiner(**kw).mine(ts, encoder=enc)
    assert a.info["mining"]["cache"] == b.info["mining"]["cache"] == "miss"
    assert DenseMiner(**kw).mine(ts, encoder=FakeEncoder()).info["mining"]["cache"] == "hit"


# ---------------------------------------------------------------- config errors
BAD = [
    (BM25Miner, {"top_k": 0}, "miner.top_k"),
    (BM25Miner, {"n_negatives": 0}, "miner.n_negatives"),
    (BM25Miner, {"skip_top": 50}, "miner.skip_top"),
    (BM25Miner, {"skip_top": -1}, "miner.skip_top"),
    (BM25Miner, {"top_k": 5, "n_negatives": 6}, "miner.n_negatives"),
    (BM25Miner, {"margin": -1}, "miner.margin"),
    (BM25Miner, {"margin": "big"}, "miner.margin"),
    (BM25Miner, {"relative_margin": 1.5}, "miner.relative_margin"),
    (BM25Miner, {"max_score": float("nan")}, "miner.max_score"),
    (BM25Miner, {"sampling": "best"}, "miner.sampling"),
    (BM25Miner, {"on_short": "pad"}, "miner.on_short"),
    (BM25Miner, {"exclude_positives": "none"}, "miner.exclude_positives"),
    (BM25Miner, {"seed": -1}, "miner.seed"),
    (BM25Miner, {"k1": 0}, "miner.k1"),
    (BM25Miner, {"b": 1.5}, "miner.b"),
    (BM25Miner, {"epsilon": -0.1}, "miner.epsilon"),
    (BM25Miner, {"backend": "bm25x"}, "miner.backend"),
    (BM25Miner, {"token_pattern": "ngram"}, "miner.token_pattern"),
    (BM25Miner, {"lowercase": "yes"}, "miner.lowercase"),
    (BM25Miner, {"stopwords": "french"}, "miner.stopwords"),
    (BM25Miner, {"stemmer": "lancaster"}, "miner.stemmer"),
    (BM25Miner, {"query_batch": 0}, "miner.query_batch"),
    (BM25Miner, {"cache": "yes"}, "miner.cache"),
    (BM25Miner, {"cache": True, "cache_dir": None}, "miner.cache_dir"),
    (DenseMiner, {"batch_size": 0}, "miner.batch_size"),
    (DenseMiner, {"use_faiss": 1}, "miner.use_faiss"),
    (DenseMiner, {"model": ""}, "miner.model"),
    (CrossEncoderMiner, {"model_path": None}, "miner.model_path"),
    (CrossEncoderMiner, {"model_path": "/no/such/folder"}, "miner.model_path"),
]


@pytest.mark.parametrize("cls,kwargs,key", BAD, ids=[f"{c.__name__}-{k}" for c, _, k in BAD])
def test_bad_config_values_name_the_key(cls, kwargs, key):
    kwargs = {"cache_dir": "/tmp/unused", **kwargs}
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    assert str(e.value).startswith(key), str(e.value)
    assert "\n" not in str(e.value)


def test_cross_encoder_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^miner.model_path='.*': not a model folder"):
        CrossEncoderMiner(model_path=str(tmp_path), cache=False)
    (tmp_path / "config.json").write_text("{}")
    kw = dict(model_path=str(tmp_path), cache=False)
    for extra, key in [
        ({"candidates": "splade"}, "miner.candidates"),
        ({"n_candidates": 10, "top_k": 20}, "miner.n_candidates"),
        ({"candidate_options": {"k1": -1}}, "miner.candidate_options.k1"),
        ({"candidate_options": {"nope": 1}}, "miner.candidate_options"),
    ]:
        with pytest.raises(ConfigError) as e:
            CrossEncoderMiner(**kw, **extra)
        assert str(e.value).startswith(key), str(e.value)


def test_needs_encoder_flags(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert BM25Miner(cache=False).needs_encoder is False
    assert RandomNegativeMiner().needs_encoder is False
    assert DenseMiner(cache=False).needs_encoder is True
    assert DenseMiner(model="/some/folder", cache=False).needs_encoder is False
    assert CrossEncoderMiner(model_path=str(tmp_path), cache=False).needs_encoder is False
    assert CrossEncoderMiner(model_path=str(tmp_path), candidates="dense", cache=False).needs_encoder is True


# ---------------------------------------------------------------- embedexp-mine
def test_mine_entry_point_writes_pairs(tmp_path, isolated_cache):
    from hydra import compose, initialize_config_dir

    from embedexp.config import config_dir, register_resolvers
    from embedexp.data.readers import load_pairs
    from embedexp.mine import mine

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "mine",
            overrides=[
                "data=demo",
                "miner=bm25",
                "miner.n_negatives=2",
                "miner.skip_top=1",
                "miner.show_progress=false",
                f"paths.output_dir={tmp_path}",
            ],
        )
    stats = mine(cfg)
    rows = load_pairs(tmp_path / "mined.jsonl")
    assert len(rows) == stats["rows"] > 50 and all(len(r) == 4 for r in rows)
    saved = json.loads((tmp_path / "mining_stats.json").read_text())
    assert saved["mining"]["removed"]["rank_window"] == saved["mining"]["rows_in"]
    assert (isolated_cache / "mining").is_dir()


@pytest.mark.parametrize("option", ["bm25", "dense", "cross_encoder", "random", "none"])
def test_miner_presets_instantiate(option, isolated_cache):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from embedexp.cli import find_user_error
    from embedexp.config import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"miner={option}", "paths.output_dir=/tmp/embedexp-test-out"])
    if option == "none":
        assert "_target_" not in cfg.miner
        return
    if option == "cross_encoder":
        with pytest.raises(Exception) as e:
            instantiate(cfg.miner)
        assert str(find_user_error(e.value)).startswith("miner.model_path=null")
        return
    miner = instantiate(cfg.miner)
    assert miner.needs_encoder is (option == "dense")
    if option != "random":
        assert miner.cache_dir == str(isolated_cache / "mining") and miner.seed == 42


def test_mine_entry_point_refuses_miner_none(tmp_path, isolated_cache):
    from hydra import compose, initialize_config_dir

    from embedexp.config import config_dir, register_resolvers
    from embedexp.mine import mine

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("mine", overrides=["miner=none", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="^miner=none has nothing to mine"):
        mine(cfg)
