"""Quantized and truncated embeddings (embedexp.eval.quantize) against sentence-transformers, faiss and numpy."""

import json

import numpy as np
import pytest
import torch

from embedexp.errors import ConfigError
from embedexp.eval import quantize as qz
from embedexp.eval.metrics import ir_metrics, retrieve


def _st_quantize():
    pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.quantization import quantize_embeddings, semantic_search_faiss
    return quantize_embeddings, semantic_search_faiss


def _random(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_and_binary_equal_sentence_transformers_quantize_embeddings():
    quantize_embeddings, _ = _st_quantize()
    corpus, queries = _random(300, 40, 0), _random(50, 40, 1) * 1.5  # queries reach outside the corpus ranges
    ranges = qz.int8_ranges(corpus)
    np.testing.assert_array_equal(ranges, np.vstack((corpus.min(0), corpus.max(0))))
    for x in (corpus, queries):
        ours = qz.quantize_int8(x, ranges)
        assert ours.dtype == np.int8
        np.testing.assert_array_equal(ours, quantize_embeddings(x, "int8", ranges=ranges))
        np.testing.assert_array_equal(qz.quantize_binary(x), quantize_embeddings(x, "ubinary"))
    assert qz.quantize_int8(queries, ranges).min() == -128 and qz.quantize_int8(queries, ranges).max() == 127
    # dims that are not a multiple of 8: the last byte is zero-padded, as in sentence-transformers
    np.testing.assert_array_equal(qz.quantize_binary(corpus[:, :13]), quantize_embeddings(corpus[:, :13], "ubinary"))


def test_hamming_search_equals_numpy_popcount_and_faiss_order():
    corpus, queries = qz.quantize_binary(_random(200, 64, 2)), qz.quantize_binary(_random(20, 64, 3))
    scores, idx = qz.search_hamming(qz.hamming_index(corpus), queries, 10)
    # independent reference: popcount of XOR over every (query, document) pair
    dist = np.unpackbits(queries[:, None, :] ^ corpus[None, :, :], axis=-1).sum(-1)
    for qi in range(len(queries)):
        assert np.array_equal(-scores[qi], dist[qi, idx[qi]])  # each returned distance is the true one
        assert np.array_equal(-scores[qi], np.sort(dist[qi])[:10])  # and they are the 10 smallest
        assert len(set(idx[qi].tolist())) == 10


def test_binary_rescore_equals_sentence_transformers_semantic_search_faiss():
    quantize_embeddings, semantic_search_faiss = _st_quantize()
    corpus, queries = _random(300, 48, 4), _random(15, 48, 5)
    bits = qz.quantize_binary(corpus)
    _, cand = qz.search_hamming(qz.hamming_index(bits), qz.quantize_binary(queries), 5 * 3)
    scores, idx = qz.rescore(queries, bits, cand, 5, 48)
    results, _ = semantic_search_faiss(
        queries, corpus_embeddings=quantize_embeddings(corpus, "ubinary"), corpus_precision="ubinary",
        top_k=5, rescore=True, rescore_multiplier=3,
    )  # fmt: skip
    for qi, hits in enumerate(results):
        assert idx[qi].tolist() == [h["corpus_id"] for h in hits]
        np.testing.assert_allclose(scores[qi], [h["score"] for h in hits], rtol=1e-5)


def test_rescoring_reorders_hamming_ties_by_float_score():
    # query bits 11100000; A, B, C are all at Hamming distance 1, D at 0
    q = np.array([[0.9, 0.1, 0.2, -0.4, -0.1, -0.1, -0.1, -0.1]], dtype=np.float32)
    bits = np.array(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],  # A: float query x bits = 1.0
            [0, 1, 1, 0, 0, 0, 0, 0],  # B: 0.3
            [1, 0, 1, 0, 0, 0, 0, 0],  # C: 1.1
            [1, 1, 1, 0, 0, 0, 0, 0],  # D: 1.2
        ]
    )
    d_bits = np.packbits(bits.astype(bool), axis=-1)
    hamming, cand = qz.search_hamming(qz.hamming_index(d_bits), qz.quantize_binary(q), 4)
    assert hamming[0].tolist() == [0, -1, -1, -1] and cand[0, 0] == 3
    scores, idx = qz.rescore(q, d_bits, cand, 3, 8)
    assert idx[0].tolist() == [3, 2, 0]  # D, C, A: the tie at distance 1 is broken by the float score
    np.testing.assert_allclose(scores[0], [1.2, 1.1, 1.0], rtol=1e-6)
    # candidates of -1 (faiss padding) never outrank real ones
    scores, idx = qz.rescore(q, d_bits, np.array([[-1, 1, 2, -1]]), 4, 8)
    assert idx[0].tolist()[:2] == [2, 1] and np.isneginf(scores[0, 2:]).all()


def test_truncate_renormalises_and_bytes_per_vector():
    x = _random(5, 32, 6)
    t = qz.truncate(x, 8)
    np.testing.assert_allclose(t, torch.nn.functional.normalize(torch.from_numpy(x[:, :8]), dim=-1).numpy(), rtol=1e-6)
    assert [qz.bytes_per_vector(p, 384) for p in qz.PRECISIONS] == [1536, 384, 48, 48]
    assert qz.bytes_per_vector("binary", 13) == 2
    with pytest.raises(ConfigError, match=r"dim=40; expected 1\.\.32"):
        qz.truncate(x, 40)
    with pytest.raises(ConfigError, match="precision='fp16'; expected one of float32, int8, binary"):
        qz.bytes_per_vector("fp16", 8)


def _toy_set(n_docs=120, n_q=12, dim=32, seed=7):
    rng = np.random.default_rng(seed)
    d = _random(n_docs, dim, seed)
    rel = rng.integers(0, n_docs, size=(n_q, 2))
    q = d[rel[:, 0]] + 0.8 * _random(n_q, dim, seed + 1)  # each query near one relevant document
    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_q)]
    qrels = {qid: {doc_ids[a]: 2, doc_ids[b]: 1} for qid, (a, b) in zip(query_ids, rel)}
    return query_ids, q.astype(np.float32), doc_ids, d, qrels


def test_float32_rows_equal_embedexp_retrieve_and_int8_scores_equal_int_dot_products():
    query_ids, q, doc_ids, d, qrels = _toy_set()
    rows = qz.evaluate_quantized(query_ids, q, doc_ids, d, qrels, dims=[32, 16], k=20, recall_at=(20,), repeats=1)
    assert [(r.precision, r.dim) for r in rows] == [(p, dim) for dim in (32, 16) for p in qz.PRECISIONS]
    for dim in (32, 16):
        ref = ir_metrics(
            retrieve(query_ids, torch.from_numpy(q[:, :dim]), doc_ids, torch.from_numpy(d[:, :dim]), 20),
            qrels, (10,), (20,), (), (),
        )  # fmt: skip
        row = next(r for r in rows if r.precision == "float32" and r.dim == dim)
        assert row.metrics == ref
    assert rows[0].retention == {"ndcg@10": 1.0, "recall@20": 1.0}
    for r in rows:
        assert r.ms_per_query > 0 and all(0 <= v <= 1 for v in r.metrics.values())
        assert r.bytes_per_vector == qz.bytes_per_vector(r.precision, r.dim)
    # int8 scores: exact integer dot products of the codes
    ranges = qz.int8_ranges(qz.truncate(d, 32))
    q8, d8 = qz.quantize_int8(qz.truncate(q, 32), ranges), qz.quantize_int8(qz.truncate(d, 32), ranges)
    scores, idx = qz.search_int8(q8, d8, 5)
    exact = q8.astype(np.int64) @ d8.astype(np.int64).T
    np.testing.assert_array_equal(scores, np.take_along_axis(exact, idx, 1))
    np.testing.assert_array_equal(scores, -np.sort(-exact, axis=1)[:, :5])


def test_bad_arguments_name_the_value():
    query_ids, q, doc_ids, d, qrels = _toy_set(n_docs=30, n_q=3)
    with pytest.raises(ConfigError, match=r"k=5; expected at least the largest metric cut-off 100"):
        qz.evaluate_quantized(query_ids, q, doc_ids, d, qrels, k=5)
    with pytest.raises(ConfigError, match="rescore_multiplier=0"):
        qz.evaluate_quantized(query_ids, q, doc_ids, d, qrels, k=100, rescore_multiplier=0)
    with pytest.raises(ConfigError, match="precision='int4'"):
        qz.evaluate_quantized(query_ids, q, doc_ids, d, qrels, precisions=["int4"])


def test_report_table_plot_and_json(tmp_path):
    query_ids, q, doc_ids, d, qrels = _toy_set()
    rows = qz.evaluate_quantized(query_ids, q, doc_ids, d, qrels, dims=[32, 8], k=20, recall_at=(20,), repeats=1)
    path = qz.write_report(rows, tmp_path, {"title": "toy", "k": 20})
    saved = json.loads(path.read_text())
    assert [r["precision"] for r in saved["rows"]] == [r.precision for r in rows] and saved["k"] == 20
    table = [ln for ln in (tmp_path / "quantization.md").read_text().splitlines() if ln.startswith("|")]
    assert len(table) == 2 + len(rows) and len({ln.count("|") for ln in table}) == 1
    assert table[2].startswith("| float32 | 32 | 128 | ") and "| binary | 8 | 1 |" in "\n".join(table)
    png = (tmp_path / "quantization.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_bench_script_encodes_once_and_writes_the_report(tmp_path, tiny_model_dir, monkeypatch):
    import importlib.util

    from conftest import REPO, write_beir

    spec = importlib.util.spec_from_file_location("bench_quantize", REPO / "scripts" / "bench_quantize.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    words = ["bone", "sleep", "vitamin", "heart", "brain", "cell", "gene", "virus"]
    corpus = {f"d{i}": ("", f"{words[i % 8]} {words[(i * 3) % 8]} study {i}") for i in range(40)}
    queries = {f"q{i}": f"{words[i]} research" for i in range(8)}
    qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 8}": 2} for i in range(8)}
    root = write_beir(tmp_path / "toy", corpus, queries, qrels)
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(root), "--k", "100", "--repeats", "1", "--out", str(out)]
    saved = json.loads(bench.main(argv).read_text())
    assert [(r["precision"], r["dim"]) for r in saved["rows"]] == [(p, 32) for p in qz.PRECISIONS]
    assert "8 queries, 40 documents" in saved["data"] and saved["encode_seconds"] > 0
    assert (out / "quantization.png").is_file() and (out / "embeddings.npz").is_file()
    # a second run reads the embeddings back instead of encoding again, and gets the same numbers
    monkeypatch.setattr("embedexp.models.Encoder.encode", lambda *a, **k: pytest.fail("encoded again"))
    again = json.loads(bench.main([*argv, "--dims", "32", "16"]).read_text())
    assert again["encode_seconds"] == 0.0 and again["rows"][0]["metrics"] == saved["rows"][0]["metrics"]
    assert [r["dim"] for r in again["rows"]] == [32] * 4 + [16] * 4
