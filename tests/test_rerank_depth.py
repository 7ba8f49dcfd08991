"""Reranking the top_k of a first stage keeps the first stage's deeper documents below them.

Before this fix the first stage retrieved only top_k documents, so with top_k=20 a "Recall@100" was Recall@20 and a
relevant document at rank 30 was lost by reranking. Hand-worked expectations and pytrec_eval as the references.
"""

import numpy as np
import pytest
import torch

from embedexp.eval.rerank import Reranker, first_stage_depth, with_tail
from embedexp.eval.sets import RetrievalSet

from conftest import DEMO

KS = {"ndcg_at": [10], "recall_at": [1, 10], "mrr_at": [10], "map_at": [10]}


class ShortestFirst:
    """A stand-in cross-encoder: the shorter the document, the higher the score."""

    def score(self, queries, docs, batch_size=32, show_progress=False, desc=""):
        return np.array([-float(len(d)) for d in docs])

    def fingerprint(self):
        return "shortest-first"


def test_depth_is_the_deepest_cutoff():
    assert first_stage_depth(20, KS) == 20
    assert first_stage_depth(5, {"recall_at": [10, 100]}) == 100


def test_with_tail_keeps_first_stage_order_below_the_reranked_head():
    first = {"q": [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]}
    out = with_tail({"q": [("b", 3.0), ("a", 2.0)]}, first)
    assert [d for d, _ in out["q"]] == ["b", "a", "c", "d"]
    scores = [s for _, s in out["q"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4  # trec_eval sorts by score


def test_bi_encoder_rerank_of_top2_keeps_a_relevant_document_at_rank_5():
    # 1 query, 12 documents whose cosine with the query decreases with their index; d4 (rank 5) is relevant
    n = 12
    doc_emb = torch.tensor([[1.0, 0.1 * i] for i in range(n)])
    q_emb = torch.tensor([[1.0, 0.0]])
    s = RetrievalSet(
        "toy",
        ["q0"],
        ["a query"],
        [f"d{i}" for i in range(n)],
        ["x" * (i + 1) for i in range(n)],
        {"q0": {"d4": 1}},
        "fp",
    )
    out = Reranker(top_k=2, scorer=ShortestFirst()).evaluate(s, q_emb, doc_emb, KS)
    # the reranker swaps d0/d1 only; d4 stays at rank 5: Recall@10 = 1, nDCG@10 = 1/log2(6), MRR@10 = 1/5
    assert out["rerank/recall@10"] == pytest.approx(1.0)
    assert out["rerank/ndcg@10"] == pytest.approx(1 / np.log2(6), abs=1e-4)
    assert out["rerank/mrr@10"] == pytest.approx(0.2, abs=1e-4)


def test_reranker_run_recall_at_10_with_top_1_equals_the_first_stage_and_pytrec_eval(tmp_path, monkeypatch):
    import pytrec_eval

    from embedexp.eval.reranker_run import FirstStage, RerankerRunEvaluator, bm25_run

    sets = {"demo_test": {"type": "retrieval", "root": str(DEMO), "split": "test"}}
    ev = RerankerRunEvaluator(
        sets, rerank={"top_k": 1, "batch_size": 8}, cache_dir=str(tmp_path), show_progress=False, **KS
    )
    s = ev.sets[0]
    first, _, _ = ev.first_stage_results()
    # reference: BM25 top 10 scored by pytrec_eval
    run, _ = bm25_run(s, 10)
    ref = pytrec_eval.RelevanceEvaluator(s.qrels, {"recall.10", "recall.1"}).evaluate(
        {q: {d: v for d, v in docs} for q, docs in run.items()}
    )
    qids = [q for q in s.query_ids if q in s.qrels]
    expected = np.mean([ref.get(q, {}).get("recall_10", 0.0) for q in qids])
    assert first["demo_test/recall@10"] == pytest.approx(expected, abs=1e-4)
    assert first["demo_test/recall@10"] > first["demo_test/recall@1"]  # the case that was wrong: depth 1 vs 10
    tuned = ev.evaluate(ShortestFirst())
    assert tuned["demo_test/recall@10"] == pytest.approx(first["demo_test/recall@10"])  # top 1 reordered: no change

    # a second evaluator over the same first stage reads its run from the cache (no BM25/encoding again)
    def boom(*a, **k):
        raise AssertionError("first stage recomputed")

    monkeypatch.setattr(FirstStage, "run", boom)
    again = RerankerRunEvaluator(
        sets, rerank={"top_k": 1, "batch_size": 8}, cache_dir=str(tmp_path), show_progress=False, **KS
    )
    assert again.first_stage_results()[0] == first
