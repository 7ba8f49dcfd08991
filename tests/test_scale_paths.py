"""Code paths that keep memory flat in the corpus size: tiled dense top-k (miner) and capped eval chunks."""

import numpy as np
import torch

from embedexp.eval import metrics
from embedexp.miners import dense
from embedexp.miners.base import topk_desc


def _data(seed=0, nq=37, nd=501, dim=8):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    d = rng.standard_normal((nd, dim)).astype(np.float32)
    d[10] = d[nd - 101]  # exact ties across tiles: corpus order must win
    d[11] = d[12]
    d[7] = np.nan  # a NaN row ranks last
    return q, d


def test_tiled_topk_equals_one_full_matrix():
    """Ranking identical to one (queries x corpus) product; scores equal up to float32 rounding."""
    q, d = _data()
    full = q @ d.T
    ref_i, ref_s = topk_desc(full, 20)
    pairs = np.array([[0, 3], [5, 400], [36, 500], [2, 7]])
    for block in (20, 33, 128, 501, 10_000):
        i, s, pos = dense.tiled_topk(q, d, 20, block, pairs)
        assert np.array_equal(i, ref_i), block
        # a product of a corpus block may differ from the full product in the last bit (BLAS blocking)
        np.testing.assert_allclose(s, ref_s, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(pos, full[pairs[:, 0], pairs[:, 1]], rtol=1e-6, atol=1e-6)


def test_rank_dense_tiles_stay_within_the_budget(monkeypatch):
    """Before: one (query chunk x whole corpus) block per chunk; now no score tile exceeds the budget."""
    q, d = _data(1, nq=300, nd=2000)
    ref_i, ref_s = topk_desc(q @ d.T, 15)
    shapes = []
    real = dense.topk_desc

    def spy(s, k):
        shapes.append(s.shape)
        return real(s, k)

    monkeypatch.setattr(dense, "topk_desc", spy)
    monkeypatch.setattr(dense, "SCORE_BLOCK_ELEMENTS", 256 * 100)
    monkeypatch.setattr(dense, "QUERY_CHUNK_MIN", 64)
    pairs = np.array([[0, 1999], [299, 0], [150, 1000]])
    i, s, pos = dense.rank_dense(q, d, 15, pairs, query_chunk=256)
    assert np.array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pos, (q @ d.T)[pairs[:, 0], pairs[:, 1]], rtol=1e-6, atol=1e-6)
    assert len(shapes) > 1 and max(r * c for r, c in shapes) <= 256 * 100


def test_eval_top_k_chunks_are_capped(monkeypatch):
    """metrics.top_k: a (query chunk x corpus block) tile is capped at SCORE_BLOCK_ELEMENTS similarities (before:
    chunk_size=1024 queries whatever the corpus size, 4 GB of scores at 10^6 documents); the ranking is unchanged."""
    q, d = _data(2, nq=50, nd=300)
    q, d = torch.from_numpy(np.nan_to_num(q)), torch.from_numpy(np.nan_to_num(d))
    ids = [f"d{i:04d}" for i in range(300)]
    ref_s, ref_i = metrics.top_k(q, d, 10, doc_ids=ids)  # one chunk: 50 x 300 < the default budget
    rows = []
    real_mm = torch.Tensor.__matmul__

    def spy(a, b):
        out = real_mm(a, b)
        rows.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    monkeypatch.setattr(metrics, "SCORE_BLOCK_ELEMENTS", 300 * 7)
    s, i = metrics.top_k(q, d, 10, doc_ids=ids)
    assert max(rows) <= 300 * 7 and len(rows) >= 8
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(s, ref_s, rtol=1e-6, atol=1e-6)  # fewer rows per product: last-bit rounding only


def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_md_template_links_the_scale_benchmarks():
    """scripts/bench.py regenerates docs/benchmarks.md: the link to benchmarks_scale.md must survive a rerun."""
    text = _script("bench").render({})
    assert "[benchmarks_scale.md](benchmarks_scale.md)" in text


def test_scale_plot_is_written_from_bench_rows(tmp_path):
    bench_scale = _script("bench_scale")
    rows = [
        {"stage": s, "docs": n, "cpu_s": c * n / 1e4, "peak_rss_mb": 300 + m * n / 1e4}
        for s, c, m in (("bm25-fast", 6.0, 10), ("eval", 5.0, 2))
        for n in (10_000, 100_000, 1_000_000)
    ]
    out = bench_scale.plot(rows + [{**rows[0], "cpu_s": 7.0}], tmp_path / "scale.png")  # a rerun row wins
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
