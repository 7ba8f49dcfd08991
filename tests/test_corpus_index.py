"""Mining's corpus bookkeeping (embedexp/miners/corpus_index.py): the same answers as whole-corpus dicts, in numpy."""

import tracemalloc

import numpy as np

from embedexp.miners import corpus_index
from embedexp.miners.corpus_index import canonical_index, corpus_lookup


def _docs(n=3000, distinct=900, seed=0):
    rng = np.random.default_rng(seed)
    return [f"text {int(v)}" for v in rng.integers(0, distinct, n)]


def _first_index_reference(docs):
    first: dict[str, int] = {}
    return np.array([first.setdefault(t, i) for i, t in enumerate(docs)], dtype=np.int64)


def test_canonical_index_is_the_first_occurrence_of_each_text():
    docs = _docs()
    assert np.array_equal(canonical_index(docs), _first_index_reference(docs))
    assert canonical_index([]).shape == (0,)


def test_hash_collisions_are_split_exactly(monkeypatch):
    """Every text in one of three hash buckets: groups mix different texts and must still map to each text's own
    first index."""
    monkeypatch.setattr(corpus_index, "_hash", lambda t: len(t) % 3)
    docs = _docs(500, 120, seed=1)
    assert np.array_equal(canonical_index(docs), _first_index_reference(docs))


def test_lookup_covers_the_wanted_ids_and_texts_only():
    docs = ["a", "b", "a", "c", "b"]
    ids = ["d0", "d1", "d2", "d3", "d4"]
    canon, id_to_idx, text_to_idx = corpus_lookup(ids, docs, ["d3", "d9"], ["b", "zzz"])
    assert canon.tolist() == [0, 1, 0, 3, 1]
    assert id_to_idx == {"d3": 3} and text_to_idx == {"b": 1}


def test_no_whole_corpus_dicts():
    """Before: dicts from every id and every text to an index (116 bytes per document at the peak, traced; ~110 MB at
    10^6 documents). Traced here against those two dicts built on the same 50,000 documents (now ~53 bytes)."""
    docs = [f"document number {i % 40_000} about something" for i in range(50_000)]
    ids = [f"doc{i}" for i in range(50_000)]

    def peak(fn):
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def old():
        id_to_idx = {d: i for i, d in enumerate(ids)}
        text_to_idx: dict[str, int] = {}
        for i, t in enumerate(docs):
            text_to_idx.setdefault(t, i)
        return id_to_idx, text_to_idx, np.fromiter((text_to_idx[t] for t in docs), np.int64, len(docs))

    new = peak(lambda: corpus_lookup(ids, docs, ids[:100], docs[:100]))
    assert new < 0.5 * peak(old), new
    assert new < 60 * len(docs), new / len(docs)  # bytes per document: a few int64 arrays
