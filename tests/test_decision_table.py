"""The bi-encoder vs cross-encoder decision table (embedexp/eval/decision.py) on the packaged demo eval set.

Tiny random bi-encoder and cross-encoder built offline; every quality number is checked against pytrec_eval on
the row's own run, the BM25 run against rank_bm25, the bi-encoder rows against the Evaluator's own metrics and
the reranked row against `eval.rerank`.
"""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from embedexp.cli import one_line_errors
from embedexp.config import config_dir, register_resolvers
from embedexp.errors import ConfigError

from conftest import DEMO, tiny_cross_encoder

SETS = {
    "demo_test": {"type": "retrieval", "root": str(DEMO), "split": "test"},
    "demo_sts": {"type": "sts", "path": str(DEMO / "sts.tsv")},
}
KS = {"ndcg_at": [10], "recall_at": [100], "mrr_at": [10], "map_at": [10]}
STATS = {"alpha": 0.05, "confidence": 0.95, "n_resamples": 1000, "seed": 0}
PREFIX = "embedexp: error: "


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core CI machine two threads per process spin against each other (the tiny
    models here then cost ~8x the CPU time); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory, tiny_model_dir):
    """A tiny random BertForSequenceClassification with one label (a CrossEncoder folder) + the MiniLM tokenizer."""
    return tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce", tiny_model_dir, seed=3)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from embedexp.models import Encoder

    return Encoder(str(tiny_model_dir))


@pytest.fixture(scope="module")
def evaluator():
    from embedexp.eval import Evaluator

    return Evaluator(SETS, show_progress=False, **KS)


@pytest.fixture(scope="module")
def table(evaluator, encoder, cross_encoder_dir):
    from embedexp.eval.decision import decision_table

    settings = {"reranker": str(cross_encoder_dir), "top_k": 10, "batch_sizes": [1, 4], "max_queries_for_latency": 6}
    return decision_table(evaluator.sets[0], [("bi-encoder base", encoder)], settings, stats=STATS)


def _pytrec(run, qrels):
    """nDCG@10 and Recall@100 of a run by pytrec_eval (trec_eval's own code)."""
    import pytrec_eval

    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_q = ev.evaluate({q: {d: float(s) for d, s in ranked} for q, ranked in run.items()})
    return (
        float(np.mean([per_q[q]["ndcg_cut_10"] if q in per_q else 0.0 for q in qrels])),
        float(np.mean([per_q[q]["recall_100"] if q in per_q else 0.0 for q in qrels])),
    )


def test_rows_equal_pytrec_eval_rank_bm25_and_the_evaluator(table, evaluator, encoder, cross_encoder_dir):
    from rank_bm25 import BM25Okapi

    from embedexp.eval.rerank import Reranker
    from embedexp.miners.tokenize import Tokenizer

    s = evaluator.sets[0]
    rows = {r.name: r for r in table["rows"]}
    assert list(rows) == ["BM25", "BM25 + reranker", "bi-encoder base", "bi-encoder base + reranker"]
    for r in table["rows"]:  # every row's metrics = pytrec_eval on the row's own final ranking
        ndcg, recall = _pytrec(r.run, s.qrels)
        assert r.ndcg == pytest.approx(ndcg, abs=1e-9), r.name
        assert r.recall == pytest.approx(recall, abs=1e-9), r.name
        assert len(r.per_query) == len(s.qrels)

    # BM25: rank_bm25's scores, documents with a score > 0, best first
    tok = Tokenizer()
    bm25 = BM25Okapi([tok(d) for d in s.docs])
    for qid, query in zip(s.query_ids, s.queries):
        scores = bm25.get_scores(tok(query))
        expected = {s.doc_ids[j]: scores[j] for j in np.flatnonzero(scores > 0)}
        got = dict(rows["BM25"].run[qid])
        assert set(got) == set(expected) and all(got[d] == pytest.approx(v, rel=1e-12) for d, v in expected.items())

    # bi-encoder base: the run's own numbers (embedexp.eval.Evaluator)
    own = evaluator.evaluate(encoder)
    assert rows["bi-encoder base"].ndcg == pytest.approx(own["demo_test/ndcg@10"], abs=1e-12)
    assert rows["bi-encoder base"].recall == pytest.approx(own["demo_test/recall@100"], abs=1e-12)

    # reranked: eval.rerank's nDCG@10 (top 10 re-ordered); the tail keeps the first stage's Recall@100
    evaluator.reranker = Reranker(str(cross_encoder_dir), top_k=10)
    try:
        rr = evaluator.evaluate(encoder)
    finally:
        evaluator.reranker = None
    assert rows["bi-encoder base + reranker"].ndcg == pytest.approx(rr["demo_test/rerank/ndcg@10"], abs=1e-12)
    assert rows["bi-encoder base + reranker"].ndcg != pytest.approx(rows["bi-encoder base"].ndcg, abs=1e-6)
    assert rows["bi-encoder base + reranker"].recall == pytest.approx(rows["bi-encoder base"].recall, abs=1e-12)
    assert rows["BM25 + reranker"].recall == pytest.approx(rows["BM25"].recall, abs=1e-12)


def test_latency_and_significance_columns(table):
    from embedexp.eval.stats import compare_paired

    rows = {r.name: r for r in table["rows"]}
    assert table["n_latency_queries"] == 6 and table["n_queries"] == len(rows["BM25"].per_query)
    for r in table["rows"]:
        assert set(r.ms_per_query) == {1, 4} and all(v > 0 for v in r.ms_per_query.values())
        assert set(r.cpu_ms_per_query) == {1, 4}
    for stage in ("BM25", "bi-encoder base"):  # same batches, first stage + the reranker's own time
        plus = rows[f"{stage} + reranker"]
        assert all(plus.ms_per_query[b] > rows[stage].ms_per_query[b] for b in (1, 4))
    assert [(r.name, r.vs) for r in table["rows"]] == [
        ("BM25", None),
        ("BM25 + reranker", "BM25"),
        ("bi-encoder base", "BM25"),
        ("bi-encoder base + reranker", "bi-encoder base"),
    ]
    assert rows["BM25"].comparison is None
    for r in table["rows"][1:]:
        c, prev = r.comparison, rows[r.vs]
        assert c["delta"] == pytest.approx(r.ndcg - prev.ndcg, abs=1e-12)
        ref = compare_paired(prev.per_query, r.per_query, n_resamples=1000, seed=0)
        assert (c["p"], c["ci_low"], c["ci_high"]) == (ref.p, ref.ci_low, ref.ci_high)
        assert c["p"] <= c["p_holm"] <= 1 and c["verdict"] in ("better", "worse", "no significant difference")
    assert [o["what"].split(" ")[0] for o in table["offline"]] == ["BM25", "bi-encoder"]
    assert all(o["seconds"] >= 0 for o in table["offline"])


def _compose(tmp_path, *overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[
                "model=tiny",
                "data=demo",
                f"paths.output_dir={tmp_path / 'out'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "eval.show_progress=false",
                "eval.stats.n_resamples=1000",
                *overrides,
            ],
        )


def test_evaluate_writes_the_decision_section_json_and_plot(tmp_path, cross_encoder_dir, capsys):
    from embedexp.evaluate import evaluate
    from embedexp.models import Encoder
    from embedexp.models.tiny import build_tiny_bert

    tuned = Encoder(str(build_tiny_bert(tmp_path / "other", seed=5))).save(tmp_path / "tuned")
    cfg = _compose(
        tmp_path,
        f"tuned={tuned}",
        f"eval.decision.reranker=[{cross_encoder_dir}]",  # a list of one; setting it turns the table on
        "eval.decision.top_k=10",
        "eval.decision.batch_sizes=[1,8]",
        "eval.decision.max_queries_for_latency=4",
    )
    evaluate(cfg)
    out = tmp_path / "out"
    md = (out / "results.md").read_text()
    section = md[md.index("## Decision table") :]
    assert "### demo_test" in section and "demo_sts" not in section.split("## Per-query")[0]
    assert "| pipeline | nDCG@10 | Recall@100 | ms/query (batch 1) | ms/query (batch 8) | vs |" in section
    assert "| bi-encoder base + reranker |" in section and "Offline cost" in section
    assert "![decision](decision.png)" in section
    decision = json.loads((out / "results.json").read_text())["decision"]
    rows = decision["sets"]["demo_test"]["rows"]
    assert [(r["name"], r["vs"]) for r in rows] == [
        ("BM25", None),
        ("BM25 + reranker", "BM25"),
        ("bi-encoder base", "BM25"),
        ("bi-encoder base + reranker", "bi-encoder base"),
        ("bi-encoder tuned", "bi-encoder base"),
        ("bi-encoder tuned + reranker", "bi-encoder tuned"),
    ]
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert rows[2]["ndcg@10"] == pytest.approx(metrics["demo_test/ndcg@10"]["base"], abs=1e-12)
    assert rows[4]["ndcg@10"] == pytest.approx(metrics["demo_test/ndcg@10"]["tuned"], abs=1e-12)
    assert rows[4]["comparison"]["delta"] == pytest.approx(metrics["demo_test/ndcg@10"]["delta"], abs=1e-12)
    assert decision["settings"]["reranker"] == [str(cross_encoder_dir)]
    assert set(rows[1]["ms_per_query"]) == {"1", "8"}
    png = (out / "decision.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _fails(tmp_path, capsys, *overrides) -> str:
    from embedexp.evaluate import evaluate

    cfg = _compose(tmp_path, *overrides)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        one_line_errors(evaluate)(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    tail = err[err.index(PREFIX) :]
    assert err.count(PREFIX) == 1 and tail.count("\n") == 1, err[-2000:]
    assert not (tmp_path / "out" / "results.json").exists()
    return tail[len(PREFIX) :].strip()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["+eval.decision.topk=5"], "eval.decision.topk is not a setting; expected one of enabled, reranker, top_k"),
        (["eval.decision.enabled=true", "eval.decision.batch_sizes=[]"], "eval.decision.batch_sizes=[]; expected a"),
        (["eval.decision.top_k=0"], "eval.decision.top_k=0; expected an integer >= 1"),
        (["eval.decision.enabled=maybe"], "eval.decision.enabled='maybe'; expected true or false"),
        (["eval.decision.reranker=/nowhere/ce"], "eval.decision.reranker=/nowhere/ce: folder does not exist"),
        (["eval.decision.reranker=[/nowhere/ce]"], "eval.decision.reranker[0]=/nowhere/ce: folder does not exist"),
        (
            ["eval.decision.enabled=true", "~data.eval_sets.demo_test"],
            "eval.decision.enabled=true but the eval sets have no",
        ),
    ],
)
def test_bad_decision_settings_give_one_line(tmp_path, capsys, overrides, expected):
    assert expected in _fails(tmp_path, capsys, *overrides)


def test_reranker_folder_without_config_and_off_by_default(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = _fails(tmp_path, capsys, f"eval.decision.reranker={tmp_path / 'empty'}")
    assert line == f"eval.decision.reranker={tmp_path / 'empty'}: not a model folder (no config.json); " + (
        "expected a cross-encoder folder (a sequence-classification model)"
    )
    from embedexp.eval.config import check_decision_config, decision_enabled

    assert not decision_enabled({"enabled": None, "reranker": None})
    assert decision_enabled({"enabled": None, "reranker": "x"}) and decision_enabled({"enabled": True})
    assert not decision_enabled({"enabled": False, "reranker": "x"})
    check_decision_config({"enabled": False, "reranker": "/nowhere"})  # off: folders are not looked at
    with pytest.raises(ConfigError, match=r"eval\.decision\.reranker\[1\]=3; expected the folder"):
        check_decision_config({"enabled": False, "reranker": ["a", 3]})


def test_precomputed_corpus_embeddings_give_the_same_rows(table, evaluator, encoder):
    """A caller that already encoded the corpus passes it in: same ranking and metrics, offline cost not timed."""
    from embedexp.eval.decision import decision_table

    s = evaluator.sets[0]
    d = encoder.encode(s.docs, "document")
    settings = {"bm25": False, "batch_sizes": [2], "max_queries_for_latency": 2}
    again = decision_table(
        s, [("bi-encoder base", encoder)], settings, stats=STATS, doc_embeddings={"bi-encoder base": d}
    )
    (row,) = again["rows"]
    first = next(r for r in table["rows"] if r.name == "bi-encoder base")
    assert row.run == first.run and row.per_query == first.per_query
    assert again["offline"][0]["seconds"] is None and row.comparison is None and set(row.ms_per_query) == {2}
    with pytest.raises(ValueError, match="3 precomputed embeddings for"):
        decision_table(s, [("bi-encoder base", encoder)], settings, doc_embeddings={"bi-encoder base": d[:3]})
