"""BM25 from int32 token ids (issue 21): same vocabulary, same index, same scores as the token-list path and
rank_bm25, without keeping the corpus as per-token Python strings."""

from __future__ import annotations

import random

import numpy as np
import pytest

from embedexp.miners import BM25Miner
from embedexp.miners.bm25 import BM25Index, rank_reference
from embedexp.miners.tokenize import Tokenizer

rank_bm25 = pytest.importorskip("rank_bm25")

WORDS = "heart cell protein gene the of a Zürich naïve café ÉCOLE river stone  cloud x1 déjà-vu".split(" ")


def corpus(seed: int, n: int = 90) -> list[str]:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14))) for _ in range(n)]
    docs[3] = "the of a"  # only stop words: an empty document under the default tokenizer
    docs[7] = "\tcafé  café\ncafé "  # repeats and odd white space
    return docs


@pytest.mark.parametrize(
    "tok",
    [Tokenizer(), Tokenizer("whitespace", False, None), Tokenizer("word", False, "english")],
    ids=["default", "guide-split", "word-case"],
)
def test_ids_are_the_token_lists_numbered_in_order_of_first_appearance(tok):
    docs = corpus(0)
    tids, lens, vocab = tok.ids(docs)
    lists = tok.many(docs)
    assert tids.dtype == np.int32 and lens.dtype == np.int64
    assert lens.tolist() == [len(t) for t in lists]
    order = list(dict.fromkeys(t for d in lists for t in d))  # first-appearance order, by hand
    assert list(vocab) == order and list(vocab.values()) == list(range(len(order)))
    assert tids.tolist() == [vocab[t] for d in lists for t in d]
    # an existing vocabulary is extended, not replaced
    more, _, vocab2 = tok.ids(["brand new heart"], vocab)
    assert vocab2["heart"] == vocab["heart"] and vocab2["brand"] == len(vocab) and len(vocab) == len(order)


@pytest.mark.parametrize("seed", [0, 1])
def test_index_from_ids_scores_bit_identically_to_the_token_lists_and_rank_bm25(seed):
    tok = Tokenizer()
    docs = corpus(seed)
    queries = corpus(seed + 10, n=12)
    d_tok, q_tok = tok.many(docs), tok.many(queries)
    old = BM25Index(d_tok)
    new = BM25Index.from_ids(*tok.ids(docs))
    ref = rank_bm25.BM25Okapi(d_tok)
    assert new.indices.dtype == np.int32
    assert new.average_idf == old.average_idf == ref.average_idf
    assert np.array_equal(new.idf, old.idf) and np.array_equal(new.data, old.data)
    assert np.array_equal(new.indptr, old.indptr) and np.array_equal(new.indices, old.indices)
    scores = new.score_block([new.token_ids(q) for q in q_tok])
    for qi, q in enumerate(q_tok):
        assert np.array_equal(scores[qi], ref.get_scores(q))


def test_index_weights_computed_in_chunks_equal_one_pass(monkeypatch):
    tok = Tokenizer("whitespace", False, None)
    docs = corpus(2, n=200)
    whole = BM25Index.from_ids(*tok.ids(docs))
    monkeypatch.setattr(BM25Index, "CHUNK", 7)  # many chunks, boundaries inside terms' postings
    chunked = BM25Index.from_ids(*tok.ids(docs))
    assert len(whole.data) > 50 and np.array_equal(chunked.data, whole.data)


def test_fast_miner_keeps_no_token_strings_and_ranks_like_rank_bm25():
    docs, queries = corpus(3, n=120), corpus(4, n=15)
    pairs = np.array([[q, (5 * q) % len(docs)] for q in range(len(queries))])
    miner = BM25Miner(top_k=40, cache=False, show_progress=False)
    idx, sc, pos = miner._rank(queries, docs, 40, pairs)
    assert miner._docs_tokens is None  # the corpus is held as int32 ids inside the index only
    tok = miner.tokenizer
    r_idx, r_sc, r_pos = rank_reference(tok.many(queries), tok.many(docs), 40, pairs)
    assert np.array_equal(idx, r_idx) and np.array_equal(sc, r_sc) and np.array_equal(pos, r_pos)
