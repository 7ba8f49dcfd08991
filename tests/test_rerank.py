"""Two-stage evaluation: bi-encoder top-k, cross-encoder rerank, reported beside the bi-encoder metrics."""

import numpy as np
import pytest
import torch

from embedexp.errors import ConfigError

from conftest import DEMO, tiny_cross_encoder

SETS = {
    "demo_test": {"type": "retrieval", "root": str(DEMO), "split": "test"},
    "demo_sts": {"type": "sts", "path": str(DEMO / "sts.tsv")},
}
KS = {"ndcg_at": [10], "recall_at": [5, 10], "mrr_at": [10], "map_at": [10]}


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory, tiny_model_dir):
    """A tiny random BertForSequenceClassification (one label) with the tiny BERT's tokenizer."""
    return tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce", tiny_model_dir, seed=1)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from embedexp.models import Encoder

    return Encoder(str(tiny_model_dir))


def _evaluator(rerank, **kw):
    from embedexp.eval import Evaluator

    return Evaluator(SETS, show_progress=False, rerank=rerank, **KS, **kw)


def _bi_encoder_top(encoder, s, k):
    """Independent first stage: numpy cosine, top k per query (ties: lower corpus index first)."""
    q = encoder.encode(s.queries, "query").numpy().astype(np.float64)
    d = encoder.encode(s.docs, "document").numpy().astype(np.float64)
    sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    return {
        qid: [s.doc_ids[j] for j in np.lexsort((np.arange(len(s.doc_ids)), -sim[i]))[:k]]
        for i, qid in enumerate(s.query_ids)
    }


def _trec(ranked, qrels):
    """nDCG@10, recall@5/10, MAP@10 by pytrec_eval; MRR@10 by hand."""
    import pytrec_eval

    run = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in ranked.items()}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.5,10", "map_cut.10"})
    per_q = ev.evaluate(run)
    mean = lambda m: float(np.mean([per_q[q][m] for q in qrels]))  # noqa: E731
    mrr = float(
        np.mean(
            [next((1.0 / (i + 1) for i, d in enumerate(ranked[q][:10]) if qrels[q].get(d, 0) > 0), 0.0) for q in qrels]
        )
    )
    return {
        "ndcg@10": mean("ndcg_cut_10"),
        "recall@5": mean("recall_5"),
        "recall@10": mean("recall_10"),
        "map@10": mean("map_cut_10"),
        "mrr@10": mrr,
    }


def test_rerank_equals_an_independent_two_stage_computation(encoder, cross_encoder_dir):
    """Bi-encoder top 10, then each pair scored on its own by transformers directly, sorted, scored by pytrec_eval."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ev = _evaluator({"model": str(cross_encoder_dir), "top_k": 10, "batch_size": 7})
    r = ev.evaluate(encoder)
    s = ev.sets[0]
    tok = AutoTokenizer.from_pretrained(str(cross_encoder_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(cross_encoder_dir)).eval()
    text = dict(zip(s.doc_ids, s.docs))
    reranked = {}
    with torch.no_grad():
        for qid, query, cands in zip(s.query_ids, s.queries, _bi_encoder_top(encoder, s, 10).values()):
            scores = [
                float(model(**tok(query, text[d], truncation=True, max_length=256, return_tensors="pt")).logits[0, 0])
                for d in cands
            ]
            reranked[qid] = [cands[i] for i in np.argsort(-np.array(scores), kind="stable")]
    expected = _trec(reranked, s.qrels)
    for name, value in expected.items():
        assert r[f"demo_test/rerank/{name}"] == pytest.approx(value, abs=1e-6), name
    assert any(abs(r[f"demo_test/rerank/{m}"] - r[f"demo_test/{m}"]) > 1e-3 for m in expected)  # it did reorder
    assert r["demo_test/rerank/ms_per_query"] > 0
    assert not any(k.startswith("demo_sts/rerank") for k in r)  # retrieval sets only


class OracleScorer:
    """Scores a pair by its qrels grade: a perfect second stage."""

    def __init__(self, s):
        self.grade = {
            (q, d): g
            for qid, q in zip(s.query_ids, s.queries)
            for did, d in zip(s.doc_ids, s.docs)
            for g in [s.qrels[qid].get(did, 0)]
        }
        self.calls = 0

    def score(self, queries, docs, batch_size=32, show_progress=False, desc=""):
        self.calls += 1
        return np.array([self.grade[(q, d)] for q, d in zip(queries, docs)], dtype=np.float64)


def test_oracle_reranker_is_bounded_by_the_first_stage(encoder):
    """Top 5 reranked perfectly, ranks 6+ kept in first-stage order: recall@10 = first-stage recall@10, recall@5 =
    ... of the reranked top 5 = first-stage recall@5; MRR@10 = 1 for a hit in the top 5, else the first stage's."""
    from embedexp.eval.rerank import Reranker

    ev = _evaluator(None)
    s = ev.sets[0]
    oracle = OracleScorer(s)
    ev.reranker = Reranker(top_k=5, scorer=oracle)
    r = ev.evaluate(encoder)
    top10 = _bi_encoder_top(encoder, s, 10)
    first = _trec(top10, s.qrels)

    def rr(q):
        ranks = [i + 1 for i, d in enumerate(top10[q]) if s.qrels[q].get(d, 0) > 0]
        return 0.0 if not ranks else (1.0 if ranks[0] <= 5 else 1.0 / ranks[0])

    assert r["demo_test/rerank/recall@10"] == pytest.approx(first["recall@10"], abs=1e-9)
    assert r["demo_test/rerank/recall@5"] == pytest.approx(first["recall@5"], abs=1e-9)
    assert r["demo_test/rerank/mrr@10"] == pytest.approx(np.mean([rr(q) for q in s.qrels]), abs=1e-9)
    assert r["demo_test/rerank/mrr@10"] >= r["demo_test/mrr@10"] - 1e-9
    assert oracle.calls == 1 and "demo_test/rerank/ms_per_query" in r

    ev.reranker = Reranker(top_k=len(s.doc_ids), scorer=OracleScorer(s))  # every document: a perfect ranking
    r = ev.evaluate(encoder)
    assert r["demo_test/rerank/ndcg@10"] == pytest.approx(1.0) and r["demo_test/rerank/mrr@10"] == pytest.approx(1.0)


def test_rerank_settings_and_cache_key(encoder, cross_encoder_dir, tmp_path):
    from embedexp.eval.rerank import from_config

    assert from_config(None) is None and from_config({"model": None, "top_k": 100, "batch_size": 32}) is None
    a = _evaluator({"model": str(cross_encoder_dir), "top_k": 10}, cache_dir=str(tmp_path))
    b = _evaluator({"model": str(cross_encoder_dir), "top_k": 20}, cache_dir=str(tmp_path))
    off = _evaluator({"model": None}, cache_dir=str(tmp_path))
    fp = encoder.fingerprint()
    assert len({a._key(fp, "demo"), b._key(fp, "demo"), off._key(fp, "demo")}) == 3
    with pytest.raises(ConfigError, match=r"eval\.rerank\.model='.*nowhere': the folder does not exist"):
        _evaluator({"model": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match=r"eval\.rerank\.top_k=0; expected a positive integer"):
        _evaluator({"model": str(cross_encoder_dir), "top_k": 0})
    with pytest.raises(ConfigError, match=r"eval\.rerank\.topk is not a setting"):
        _evaluator({"model": str(cross_encoder_dir), "topk": 5})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    bad = _evaluator({"model": str(tmp_path / "broken")})
    with pytest.raises(Exception, match=r"eval\.rerank\.model"):
        bad.evaluate(encoder)
