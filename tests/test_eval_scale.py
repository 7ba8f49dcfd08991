"""Exact evaluation top-k at scale: no (query chunk x corpus) temporary besides the one score block, one block alive
at a time, and the trec_eval-ordered top-k unchanged (checked against a brute-force sort of every score)."""

import weakref

import numpy as np
import pytest
import torch

from embedexp.eval import metrics


def _tied(seed=0, nq=40, nd=300, dim=4):
    """Unit vectors with entries +-0.5 (norm exactly 1, so normalising changes nothing) and exact dot products
    in multiples of 0.25: almost every row has a tie group straddling any cut."""
    rng = np.random.default_rng(seed)
    q = (rng.integers(0, 2, (nq, dim)) * 2 - 1).astype(np.float32) / 2
    d = (rng.integers(0, 2, (nd, dim)) * 2 - 1).astype(np.float32) / 2
    return torch.from_numpy(q), torch.from_numpy(d)


def _brute_force(q, d, k, ids):
    """First k of each query's full ranking by (score descending, doc id descending), in plain Python."""
    sim = (q.double() @ d.double().T).tolist()  # exact here: entries +-0.5, dim 4
    rows = []
    for scores in sim:
        order = sorted(range(len(ids)), key=lambda j: (scores[j], ids[j]), reverse=True)[:k]
        rows.append(order)
    return rows


@pytest.mark.parametrize("block_elements", [300 * 9, None])
@pytest.mark.parametrize("k", [1, 7, 100, 299, 300])
def test_top_k_with_ids_equals_brute_force_trec_order(k, block_elements, monkeypatch):
    """Ties at the cut pick the largest ids and rows are in trec_eval order, with several corpus blocks (a second
    pass over the crowded rows) and with one (crowded rows resolved from their tile), and for k = n_docs (no (k+1)-th
    score to look at)."""
    q, d = _tied()
    ids = [f"d{(j * 7919) % 1000:03d}" for j in range(d.shape[0])]  # id order unrelated to corpus order
    if block_elements:
        monkeypatch.setattr(metrics, "SCORE_BLOCK_ELEMENTS", block_elements)
    s, i = metrics.top_k(q, d, k, doc_ids=ids)
    assert i.shape == (q.shape[0], k) and s.shape == (q.shape[0], k)
    assert i.tolist() == _brute_force(q, d, k, ids)
    ref = (q @ d.T).gather(1, i)
    assert torch.equal(s, ref)


def test_no_query_chunk_by_corpus_temporary_besides_the_scores(monkeypatch):
    """Before: `(sim >= kth).sum(dim=1)` built a (chunk x n_docs) bool mask and its int64 sum per chunk (three
    times the score block's memory); now only rows whose (k+1)-th score ties the k-th are compared, one row at a
    time."""
    q, d = _tied(1, nq=64, nd=500)
    ids = [f"d{j:04d}" for j in range(500)]
    shapes = []
    real_ge = torch.Tensor.__ge__

    def spy(a, b):
        out = real_ge(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__ge__", spy)
    s, i = metrics.top_k(q, d, 10, doc_ids=ids)
    assert i.tolist() == _brute_force(q, d, 10, ids)
    assert all(len(shape) <= 1 for shape in shapes), shapes[:3]


def test_one_score_block_alive_at_a_time(monkeypatch):
    """Before: the previous chunk's (chunk x n_docs) scores were still referenced while the next product was
    computed, so two blocks (2 x 64 MB at 10^6 documents) were alive at the peak."""
    q, d = _tied(2, nq=50, nd=300)
    ids = [f"d{j:04d}" for j in range(300)]
    blocks: list[weakref.ref] = []
    alive_at_product: list[int] = []
    real_mm = torch.Tensor.__matmul__

    def spy(a, b):
        alive_at_product.append(sum(r() is not None for r in blocks))
        out = real_mm(a, b)
        blocks.append(weakref.ref(out))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    monkeypatch.setattr(metrics, "SCORE_BLOCK_ELEMENTS", 300 * 7)
    metrics.top_k(q, d, 5, doc_ids=ids)
    assert len(alive_at_product) >= 8  # 8 corpus blocks of 42 documents x 1 chunk of 50 queries, + crowded rows
    assert max(alive_at_product) == 0, alive_at_product


def test_nan_scores_keep_their_old_handling():
    """NaN scores rank first in torch.topk and are not counted by `>=`: a row whose k-th score ties the (k+1)-th only
    because of NaNs is not re-selected, as before the change."""
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[float("nan"), 0.0], [float("nan"), 0.0], [0.5, 0.5], [0.2, 0.9], [1.0, 0.1]])
    s, i = metrics.top_k(q, d, 2, doc_ids=["a", "b", "c", "d", "e"])
    assert torch.isnan(s).all() and sorted(i[0].tolist()) == [0, 1]


def test_the_corpus_is_normalised_one_block_at_a_time(monkeypatch):
    """Before: `F.normalize(doc_emb)` made a normalised float32 copy of the whole corpus (123 MB at 10^6 documents of
    dim 32, half of the evaluation's memory growth); now each corpus block is normalised when it is scored, and the
    result is the same, bit for bit, as with one block (checked here against the single-block run)."""
    rng = np.random.default_rng(3)
    d = torch.from_numpy(rng.standard_normal((300, 8), dtype=np.float32))
    q = d[:40] + 0.3 * torch.from_numpy(rng.standard_normal((40, 8), dtype=np.float32))
    ids = [f"d{(j * 31) % 300:03d}" for j in range(300)]
    ref_s, ref_i = metrics.top_k(q, d, 10, doc_ids=ids)  # 40 x 300: one tile
    rows = []
    real = metrics.F.normalize

    def spy(x, *args, **kwargs):
        rows.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(metrics.F, "normalize", spy)
    monkeypatch.setattr(metrics, "SCORE_BLOCK_ELEMENTS", 40 * 64)
    s, i = metrics.top_k(q, d, 10, doc_ids=ids)
    assert max(rows) <= 64 and len(rows) >= 5  # the queries (40 rows), then 5 corpus blocks of <= 64 documents
    assert torch.equal(i, ref_i) and torch.equal(s, ref_s)


def _dup_corpus():
    torch.manual_seed(0)
    d = torch.randn(16390, 64)
    d[-6:] = d[:6]  # documents 16384..16389 repeat documents 0..5, in another corpus block (blocks of 16384)
    return torch.randn(257, 64), d, [f"doc{i:05d}" for i in range(16390)]


def test_a_query_alone_in_its_chunk_scores_as_in_a_bigger_chunk():
    """Before: 257 queries were cut 256 + 1, and the 1-row product took another float32 kernel (MKL) than the
    4+-row ones: query 256's scores moved by one ulp, its top 4 changed order, and documents 16384-16389 no longer
    tied with their identical documents 0-5 (so trec_eval's id rule no longer decided between them). Chunks are now
    balanced (129 + 128) and a chunk under 4 rows is padded."""
    q, d, ids = _dup_corpus()
    s, i = metrics.top_k(q, d, 600, doc_ids=ids)
    s4, i4 = metrics.top_k(q[253:], d, 600, doc_ids=ids)  # the same query in a 4-row product
    assert torch.equal(s[256], s4[3]) and torch.equal(i[256], i4[3])
    s1, i1 = metrics.top_k(q[256:], d, 16390, doc_ids=ids)  # alone: padded to 4 rows
    by_doc = torch.empty_like(s1).scatter_(1, i1, s1)[0]
    assert torch.equal(by_doc[:6], by_doc[-6:])
    rank = {int(j): r for r, j in enumerate(i1[0].tolist())}
    assert all(rank[16384 + j] == rank[j] - 1 for j in range(6))  # equal scores: the larger id first


def test_a_crowded_row_keeps_k_candidates_per_block(monkeypatch):
    """Rows whose tie group straddles the cut (here: zero queries, every score 0) are resolved block by block with a
    running best k: before, every row's candidates over the whole corpus were gathered first (12 bytes per document
    per crowded row: ~12 GB for 1,000 such queries at 10^6 documents)."""
    q = torch.zeros(8, 4)
    d = torch.from_numpy(np.random.default_rng(0).standard_normal((300, 4), dtype=np.float32))
    ids = [f"d{(j * 7) % 300:03d}" for j in range(300)]
    monkeypatch.setattr(metrics, "SCORE_BLOCK_ELEMENTS", 8 * 40)
    sizes = []
    real = np.lexsort

    def spy(keys, axis=-1):
        sizes.append(np.shape(keys[0])[-1])
        return real(keys, axis=axis)

    monkeypatch.setattr(metrics.np, "lexsort", spy)
    s, i = metrics.top_k(q, d, 5, doc_ids=ids)
    assert [[ids[j] for j in row] for row in i.tolist()] == [sorted(ids, reverse=True)[:5]] * 8
    assert max(sizes) <= 5 + 40, max(sizes)
