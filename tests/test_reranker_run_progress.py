"""The reranker run evaluation (embedexp/eval/reranker_run.py): progress lines with rates for its long stages, and
`eval.rerank_base=false` (skip the untrained head's reranking pass). A stand-in scorer and a 12-document BEIR set."""

import logging

import numpy as np
import pytest

from embedexp.errors import ConfigError

from conftest import write_beir


class _CountingScorer:
    """Shorter documents score higher; counts the pairs it was asked to score."""

    def __init__(self):
        self.pairs = 0

    def score(self, queries, docs, batch_size=32, show_progress=False, desc=""):
        self.pairs += len(docs)
        return np.array([-float(len(d)) for d in docs])


@pytest.fixture()
def sets(tmp_path):
    corpus = {f"d{i}": ("", "word " * (i + 1) + f"topic{i % 3}") for i in range(12)}
    queries = {"q1": "topic0 word", "q2": "topic1", "q3": "topic2 word word"}
    qrels = {"q1": {"d0": 1, "d3": 2}, "q2": {"d4": 1}, "q3": {"d11": 1}}
    root = write_beir(tmp_path / "beir", corpus, queries, qrels)
    return {"t": {"type": "retrieval", "root": str(root), "split": "test"}}


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "embedexp.progress"]


def test_stages_log_start_and_rate_lines(sets, tiny_model_dir, caplog):
    from embedexp.eval.reranker_run import RerankerRunEvaluator

    scorer = _CountingScorer()
    with caplog.at_level(logging.INFO, logger="embedexp.progress"):
        RerankerRunEvaluator(sets, rerank={"top_k": 4, "batch_size": 2}, show_progress=False).evaluate(scorer)
    lines = _progress_lines(caplog)
    assert "t: first stage bm25: indexing and searching 12 documents ..." in lines
    assert any(line.startswith("t: first stage bm25: 12 documents in ") and "documents/s)" in line for line in lines)
    n = scorer.pairs
    assert n > 0 and f"t: bm25 top 4 + reranker: reranking {n} pairs ..." in lines
    assert any(line.startswith(f"t: bm25 top 4 + reranker: {n} pairs in ") and "pairs/s)" in line for line in lines)

    caplog.clear()
    spec = {"_target_": "embedexp.models.Encoder", "model_name_or_path": str(tiny_model_dir), "name": "tiny"}
    with caplog.at_level(logging.INFO, logger="embedexp.progress"):
        ev = RerankerRunEvaluator(sets, first_stage=spec, rerank={"top_k": 4}, show_progress=False)
        ev.evaluate(_CountingScorer())
    lines = _progress_lines(caplog)
    assert "t: first stage tiny: encoding 12 documents ..." in lines
    assert any(line.startswith("t: first stage tiny: 12 documents in ") for line in lines), lines


def test_rerank_base_false_skips_the_base_pass(sets):
    from embedexp.eval.reranker_run import RerankerRunEvaluator

    default = RerankerRunEvaluator(sets, rerank={"top_k": 4}, show_progress=False)
    scorer = _CountingScorer()
    default.evaluate(scorer, use_cache=True)
    assert scorer.pairs > 0  # default: the base reranker runs

    ev = RerankerRunEvaluator(sets, rerank={"top_k": 4}, show_progress=False, rerank_base=False)
    base_scorer, tuned_scorer = _CountingScorer(), _CountingScorer()
    base = ev.evaluate(base_scorer, use_cache=True)
    base_units = ev.last_units
    first, first_units, _ = ev.first_stage_results()
    assert base_scorer.pairs == 0 and base == first and base_units == first_units
    tuned = ev.evaluate(tuned_scorer)
    assert tuned_scorer.pairs == scorer.pairs and "t/rerank_ms_per_query" in tuned
    md = ev.markdown(base, tuned, ev.summary(base, tuned, {"tuned": ev.last_units}))
    assert "eval.rerank_base=false: the base (untrained) reranker was not run" in md
    assert "| metric | bm25 alone | + base reranker (skipped) | + tuned reranker |" in md
    row = next(line for line in md.splitlines() if line.startswith("| t/ndcg@10 |"))
    assert row.split("|")[3].strip() == ""  # no base-reranker number shown

    with pytest.raises(ConfigError, match=r"^eval\.rerank_base='no'; expected true or false$"):
        RerankerRunEvaluator(sets, rerank_base="no")
