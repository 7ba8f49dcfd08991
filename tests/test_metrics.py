"""embedexp.eval.metrics against independent references (pytrec_eval, scipy, numpy, hand computation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytrec_eval
import torch
from scipy import stats

from embedexp.eval.metrics import ir_metrics, pearson, retrieve, spearman, top_k

NDCG_AT = (1, 3, 5, 10, 100)
RECALL_AT = (1, 5, 10, 100)
MRR_AT = (1, 3, 10)
MAP_AT = (1, 10, 100)


# --------------------------------------------------------------------------- helpers


def _random_run_and_qrels(seed: int, n_queries: int = 30, n_docs: int = 200, depth: int = 100):
    """Random run (top `depth` docs, distinct scores) and graded qrels (0..3).

    Query kinds, cycling:
      0: relevant docs drawn mostly from the run, some 0-grade judged docs in and out of the run
      1: relevant docs drawn only from docs NOT in the run (nothing relevant retrieved)
      2: a mix of retrieved and unretrieved relevant docs
      3: only 0-grade judgements (no relevant doc at all)
    """
    rng = np.random.default_rng(seed)
    doc_ids = [f"d{j}" for j in range(n_docs)]
    run: dict[str, list[tuple[str, float]]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for qi in range(n_queries):
        qid = f"q{qi}"
        perm = rng.permutation(n_docs)
        in_run, out_run = perm[:depth], perm[depth:]
        # distinct scores: a random permutation of well-separated values plus small jitter
        scores = rng.permutation(depth).astype(np.float64) + rng.uniform(0.0, 0.5, depth)
        order = np.argsort(-scores)
        run[qid] = [(doc_ids[in_run[o]], float(scores[o])) for o in order]

        kind = qi % 4
        judged: dict[str, int] = {}
        if kind == 0:
            for j in rng.choice(in_run, size=rng.integers(1, 12), replace=False):
                judged[doc_ids[j]] = int(rng.integers(1, 4))
            for j in rng.choice(out_run, size=rng.integers(0, 4), replace=False):
                judged[doc_ids[j]] = int(rng.integers(1, 4))
        elif kind == 1:
            for j in rng.choice(out_run, size=rng.integers(1, 6), replace=False):
                judged[doc_ids[j]] = int(rng.integers(1, 4))
        elif kind == 2:
            for j in rng.choice(in_run[: depth // 2], size=rng.integers(1, 5), replace=False):
                judged[doc_ids[j]] = int(rng.integers(1, 4))
            for j in rng.choice(out_run, size=rng.integers(1, 5), replace=False):
                judged[doc_ids[j]] = int(rng.integers(1, 4))
        # judged non-relevant docs (grade 0), some inside the run near the top, some outside
        for j in rng.choice(in_run[:20], size=rng.integers(1, 4), replace=False):
            judged.setdefault(doc_ids[j], 0)
        for j in rng.choice(out_run, size=2, replace=False):
            judged.setdefault(doc_ids[j], 0)
        if kind == 3:
            judged = {d: 0 for d in judged}
        qrels[qid] = judged
    return run, qrels


def _pytrec_reference(run, qrels) -> dict[str, float]:
    """Mean per-query metrics from pytrec_eval, mapped to embedexp's names."""
    trec_run = {q: {d: float(s) for d, s in ranked} for q, ranked in run.items()}
    trec_qrels = {q: {d: int(g) for d, g in judged.items()} for q, judged in qrels.items()}
    measures = {
        "ndcg_cut." + ",".join(map(str, NDCG_AT)),
        "recall." + ",".join(map(str, RECALL_AT)),
        "map_cut." + ",".join(map(str, MAP_AT)),
    }
    per_query = pytrec_eval.RelevanceEvaluator(trec_qrels, measures).evaluate(trec_run)
    assert set(per_query) == set(qrels)  # every qrels query is in the run here
    out: dict[str, float] = {}
    for k in NDCG_AT:
        out[f"ndcg@{k}"] = float(np.mean([per_query[q][f"ndcg_cut_{k}"] for q in qrels]))
    for k in RECALL_AT:
        out[f"recall@{k}"] = float(np.mean([per_query[q][f"recall_{k}"] for q in qrels]))
    for k in MAP_AT:
        out[f"map@{k}"] = float(np.mean([per_query[q][f"map_cut_{k}"] for q in qrels]))
    for k in MRR_AT:
        truncated = {q: dict(list(trec_run[q].items())[:k]) for q in trec_run}
        rr = pytrec_eval.RelevanceEvaluator(trec_qrels, {"recip_rank"}).evaluate(truncated)
        out[f"mrr@{k}"] = float(np.mean([rr[q]["recip_rank"] for q in qrels]))
    return out


def _ours(run, qrels) -> dict[str, float]:
    return ir_metrics(run, qrels, ndcg_at=NDCG_AT, recall_at=RECALL_AT, mrr_at=MRR_AT, map_at=MAP_AT)


def _brute_force_run(query_ids, q, doc_ids, d, k, ignore_identical_ids=True):
    """Reference retrieval: float64 cosine similarity matrix, full argsort."""
    q = np.asarray(q, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    sim = qn @ dn.T
    run = {}
    for i, qid in enumerate(query_ids):
        order = np.argsort(-sim[i], kind="stable")
        ranked = [(doc_ids[j], float(sim[i, j])) for j in order]
        if ignore_identical_ids:
            ranked = [(dd, s) for dd, s in ranked if dd != qid]
        run[qid] = ranked[:k]
    return run, sim


# --------------------------------------------------------------------------- ir_metrics vs pytrec_eval


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_ir_metrics_match_pytrec_eval_graded(seed):
    run, qrels = _random_run_and_qrels(seed)
    # sanity: the fixture really has the cases it claims
    grades = [g for judged in qrels.values() for g in judged.values()]
    assert {0, 1, 2, 3} <= set(grades)
    unretrieved = [
        q
        for q, judged in qrels.items()
        if any(g > 0 for g in judged.values()) and not any(judged.get(d, 0) > 0 for d, _ in run[q])
    ]
    assert unretrieved, "need queries whose relevant docs are not retrieved at all"

    ours = _ours(run, qrels)
    ref = _pytrec_reference(run, qrels)
    assert set(ours) == set(ref)
    for name in ref:
        assert ours[name] == pytest.approx(ref[name], abs=1e-9, rel=0), name
    # the comparison is not vacuous: the metrics are not all 0 or all 1
    assert 0.0 < ours["ndcg@10"] < 1.0
    assert 0.0 < ours["recall@100"] < 1.0


def test_ir_metrics_match_pytrec_eval_per_query():
    """Per-query agreement (a single-query qrels each time), so averaging cannot hide offsetting errors."""
    run, qrels = _random_run_and_qrels(11, n_queries=12)
    for qid in qrels:
        ours = _ours({qid: run[qid]}, {qid: qrels[qid]})
        ref = _pytrec_reference({qid: run[qid]}, {qid: qrels[qid]})
        for name in ref:
            assert ours[name] == pytest.approx(ref[name], abs=1e-9, rel=0), (qid, name)


def test_ir_metrics_query_missing_from_run_counts_as_zero():
    """Means are over the queries in qrels: a query absent from the run contributes 0."""
    run, qrels = _random_run_and_qrels(7, n_queries=8)
    full = _ours(run, qrels)
    qrels_plus = dict(qrels)
    qrels_plus["missing"] = {"d0": 2, "d1": 1}
    with_missing = _ours(run, qrels_plus)
    n = len(qrels)
    for name, value in full.items():
        assert with_missing[name] == pytest.approx(value * n / (n + 1), abs=1e-12), name


def test_ir_metrics_run_queries_not_in_qrels_are_ignored():
    run, qrels = _random_run_and_qrels(8, n_queries=8)
    extra_run = dict(run)
    extra_run["unjudged"] = [("d0", 1.0), ("d1", 0.5)]
    assert _ours(extra_run, qrels) == _ours(run, qrels)


# --------------------------------------------------------------------------- hand-computed nDCG


def test_ndcg_hand_computed_graded():
    # qrels grades: a=3, b=2, e=2, c=1, d=0 (judged non-relevant)
    qrels = {"q": {"a": 3, "b": 2, "c": 1, "d": 0, "e": 2}}
    # ranking: 1:d(0) 2:a(3) 3:x(unjudged) 4:c(1) 5:b(2) 6:y 7:z 8:w 9:v 10:u 11:e(2)
    ranked = ["d", "a", "x", "c", "b", "y", "z", "w", "v", "u", "e"]
    run = {"q": [(doc, float(100 - i)) for i, doc in enumerate(ranked)]}

    # DCG@10 = sum gain / log2(rank + 1) over the top 10 (e at rank 11 is cut off)
    dcg10 = 0 / math.log2(2) + 3 / math.log2(3) + 0 / math.log2(4) + 1 / math.log2(5) + 2 / math.log2(6)
    # ideal ordering of the grades: 3, 2, 2, 1
    idcg10 = 3 / math.log2(2) + 2 / math.log2(3) + 2 / math.log2(4) + 1 / math.log2(5)
    expected10 = dcg10 / idcg10
    # numerically: dcg10 = 1.8927892607 + 0.4306765581 + 0.7737056144 = 3.0971714332
    #              idcg10 = 3 + 1.2618595071 + 1 + 0.4306765581 = 5.6925360652
    assert dcg10 == pytest.approx(3.0971714332, abs=1e-9)
    assert idcg10 == pytest.approx(5.6925360652, abs=1e-9)
    assert expected10 == pytest.approx(0.5440758561, abs=1e-9)

    # nDCG@3: DCG = 3/log2(3); ideal = 3/1 + 2/log2(3) + 2/log2(4)
    expected3 = (3 / math.log2(3)) / (3 + 2 / math.log2(3) + 2 / math.log2(4))

    m = ir_metrics(run, qrels, ndcg_at=(3, 10, 11), recall_at=(10,), mrr_at=(10,), map_at=(10,))
    assert m["ndcg@10"] == pytest.approx(expected10, abs=1e-12)
    assert m["ndcg@3"] == pytest.approx(expected3, abs=1e-12)
    # at 11, e (grade 2) is included
    dcg11 = dcg10 + 2 / math.log2(12)
    assert m["ndcg@11"] == pytest.approx(dcg11 / idcg10, abs=1e-12)

    # linear gains, not exponential (2^g - 1): the exponential variant gives a different number
    exp_dcg = (2**3 - 1) / math.log2(3) + (2**1 - 1) / math.log2(5) + (2**2 - 1) / math.log2(6)
    exp_idcg = 7 + 3 / math.log2(3) + 3 / math.log2(4) + 1 / math.log2(5)
    assert abs(m["ndcg@10"] - exp_dcg / exp_idcg) > 1e-3

    # the other metrics on the same example
    assert m["recall@10"] == pytest.approx(3 / 4)  # a, c, b of the 4 relevant
    assert m["mrr@10"] == pytest.approx(1 / 2)  # first relevant is a at rank 2
    assert m["map@10"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 4)


# --------------------------------------------------------------------------- retrieve end-to-end


def test_retrieve_matches_brute_force_and_metrics_agree():
    g = torch.Generator().manual_seed(0)
    n_q, n_d, dim, k = 25, 300, 16, 50
    q = torch.randn(n_q, dim, generator=g, dtype=torch.float64) * 3.0  # unnormalised
    d = torch.randn(n_d, dim, generator=g, dtype=torch.float64) * torch.rand(n_d, 1, generator=g, dtype=torch.float64)
    query_ids = [f"q{i}" for i in range(n_q)]
    doc_ids = [f"doc{j}" for j in range(n_d)]

    ref_run, sim = _brute_force_run(query_ids, q.numpy(), doc_ids, d.numpy(), k)
    # precondition: no near-ties in the top k+1 that float32 arithmetic (error ~1e-7) could legitimately
    # reorder; the fixed seed satisfies it, this guards against a silent change of the random data
    top_sorted = -np.sort(-sim, axis=1)[:, : k + 1]
    assert np.min(-np.diff(top_sorted, axis=1)) > 2e-6

    run = retrieve(query_ids, q, doc_ids, d, k)
    assert list(run) == query_ids
    for qid in query_ids:
        assert [dd for dd, _ in run[qid]] == [dd for dd, _ in ref_run[qid]], qid
        np.testing.assert_allclose([s for _, s in run[qid]], [s for _, s in ref_run[qid]], atol=1e-5, rtol=0)

    # top_k with chunking gives the same as one chunk and as the reference
    scores, idx = top_k(q, d, k, chunk_size=7)
    ref_idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(sim, ref_idx, axis=1), atol=1e-5, rtol=0)

    # metrics on the retrieved run: random graded qrels; must match the reference run and pytrec_eval
    rng = np.random.default_rng(0)
    qrels = {
        qid: {doc_ids[j]: int(rng.integers(0, 4)) for j in rng.choice(n_d, size=15, replace=False)} for qid in query_ids
    }
    ours = ir_metrics(run, qrels, ndcg_at=(10,), recall_at=(10, 50), mrr_at=(10,), map_at=(10,))
    ref = ir_metrics(ref_run, qrels, ndcg_at=(10,), recall_at=(10, 50), mrr_at=(10,), map_at=(10,))
    assert ours == pytest.approx(ref, abs=1e-12)
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10,50", "map_cut.10"}).evaluate(
        {qid: {dd: s for dd, s in ref_run[qid]} for qid in query_ids}
    )
    assert ours["ndcg@10"] == pytest.approx(np.mean([trec[x]["ndcg_cut_10"] for x in query_ids]), abs=1e-9)
    assert ours["recall@50"] == pytest.approx(np.mean([trec[x]["recall_50"] for x in query_ids]), abs=1e-9)
    assert ours["map@10"] == pytest.approx(np.mean([trec[x]["map_cut_10"] for x in query_ids]), abs=1e-9)


def test_retrieve_k_larger_than_corpus():
    g = torch.Generator().manual_seed(3)
    q, d = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    run = retrieve(["a", "b", "c", "e"], q, [f"x{j}" for j in range(6)], d, k=10)
    for ranked in run.values():
        assert sorted(dd for dd, _ in ranked) == [f"x{j}" for j in range(6)]
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True)


def test_retrieve_ignores_identical_ids():
    g = torch.Generator().manual_seed(1)
    n_d, dim, k = 40, 12, 10
    d = torch.randn(n_d, dim, generator=g, dtype=torch.float64)
    doc_ids = [f"id{j}" for j in range(n_d)]
    # queries share ids with docs; make each query (nearly) its own doc so it would rank first
    shared = [3, 17, 29]
    q = d[shared] * 2.0 + 1e-3 * torch.randn(len(shared), dim, generator=g, dtype=torch.float64)
    query_ids = [doc_ids[j] for j in shared] + ["fresh"]
    q = torch.cat([q, torch.randn(1, dim, generator=g, dtype=torch.float64)])

    run = retrieve(query_ids, q, doc_ids, d, k, ignore_identical_ids=True)
    ref_run, sim = _brute_force_run(query_ids, q.numpy(), doc_ids, d.numpy(), k)
    for i, qid in enumerate(query_ids):
        got = [dd for dd, _ in run[qid]]
        assert qid not in got
        assert len(got) == k
        assert got == [dd for dd, _ in ref_run[qid]]
        np.testing.assert_allclose([s for _, s in run[qid]], [s for _, s in ref_run[qid]], atol=1e-5, rtol=0)
    # the identical doc really was the nearest one (so the filter was exercised)
    for i, j in enumerate(shared):
        assert int(np.argmax(sim[i])) == j

    # with ignore_identical_ids=False (the default, as in BEIR and mteb) it is returned first
    run_keep = retrieve(query_ids, q, doc_ids, d, k)
    for qid in query_ids[:3]:
        assert run_keep[qid][0][0] == qid
        assert len(run_keep[qid]) == k


# --------------------------------------------------------------------------- spearman / pearson


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_continuous(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=200)
    y = 0.6 * x + rng.normal(size=200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(list(x), list(y)) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=150)
    y = 0.5 * x + rng.normal(size=150)
    xr, yr = np.round(x), np.round(y * 2) / 2  # many ties
    assert len(np.unique(xr)) < 20 and len(np.unique(yr)) < 30
    ref = stats.spearmanr(xr, yr).statistic
    assert spearman(xr, yr) == pytest.approx(ref, abs=1e-12)
    # ties handled by average ranks: differs from ordinal-rank Pearson
    ordinal = np.corrcoef(np.argsort(np.argsort(xr, kind="stable")), np.argsort(np.argsort(yr, kind="stable")))[0, 1]
    assert abs(ref - ordinal) > 1e-6
    # integer scores (typical STS gold labels 0..5)
    gold = rng.integers(0, 6, size=150)
    assert spearman(gold, y) == pytest.approx(stats.spearmanr(gold, y).statistic, abs=1e-12)


def test_spearman_small_hand_example_with_ties():
    x = [1.0, 2.0, 2.0, 3.0]
    y = [10.0, 30.0, 20.0, 40.0]
    # ranks x: 1, 2.5, 2.5, 4 ; y: 1, 3, 2, 4
    rx = np.array([1, 2.5, 2.5, 4]) - 2.5
    ry = np.array([1, 3, 2, 4]) - 2.5
    expected = float((rx * ry).sum() / math.sqrt((rx * rx).sum() * (ry * ry).sum()))
    assert spearman(x, y) == pytest.approx(expected, abs=1e-15)
    assert expected == pytest.approx(0.9486832980505138, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_pearson_matches_scipy(seed):
    rng = np.random.default_rng(200 + seed)
    x = rng.normal(size=100) * 5 + 3
    y = -0.3 * x + rng.normal(size=100)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    xr = np.round(x)
    assert pearson(xr, y) == pytest.approx(stats.pearsonr(xr, y).statistic, abs=1e-12)


def test_constant_input_gives_nan():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(pearson([1, 2, 3], [2, 2, 2]))
