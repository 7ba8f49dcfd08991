"""Issue 19 leftovers of the decision table (embedexp/eval/decision.py): each corpus is encoded once per
`embedexp-evaluate` command, `eval.precision` applies to the bi-encoders and the cross-encoders (with the same
fallback as the Evaluator), and long stages log progress lines with their rate. Tiny random models, the demo set."""

import functools
import json
import logging

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from embedexp.config import config_dir, register_resolvers

from conftest import DEMO, tiny_cross_encoder

SETS = {"demo_test": {"type": "retrieval", "root": str(DEMO), "split": "test"}}
KS = {"ndcg_at": [10], "recall_at": [100], "mrr_at": [10], "map_at": [10]}
STATS = {"n_resamples": 200, "seed": 0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory, tiny_model_dir):
    """A tiny random one-label BertForSequenceClassification folder (a CrossEncoder) with the tiny tokenizer."""
    return tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce", tiny_model_dir, seed=7)


@pytest.fixture(scope="module")
def demo_set():
    from embedexp.eval.sets import load_eval_sets

    return load_eval_sets(SETS)[0]


@pytest.fixture()
def corpus_encodes(monkeypatch):
    """Counts Encoder.encode calls on a demo corpus (kind=document, 100+ texts), per encoder object."""
    from embedexp.models import Encoder

    calls: list[tuple[int, str]] = []
    original = Encoder.encode

    @functools.wraps(original)
    def counting(self, texts, kind="document", *args, **kwargs):
        if kind == "document" and len(texts) >= 100:
            calls.append((id(self), str(kwargs.get("precision", "fp32"))))
        return original(self, texts, kind, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", counting)
    return calls


def _evaluate(tmp_path, *overrides):
    from embedexp.evaluate import evaluate
    from embedexp.models import Encoder
    from embedexp.models.tiny import build_tiny_bert

    tuned = tmp_path / "tuned"
    if not tuned.exists():
        Encoder(str(build_tiny_bert(tmp_path / "other", seed=5))).save(tuned)
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[
                "model=tiny",
                "data=demo",
                "~data.eval_sets.demo_sts",
                f"tuned={tuned}",
                f"paths.output_dir={tmp_path / 'out'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "eval.show_progress=false",
                "eval.stats.n_resamples=200",
                "eval.decision.enabled=true",
                "eval.decision.bm25=false",
                "eval.decision.batch_sizes=[4]",
                "eval.decision.max_queries_for_latency=4",
                *overrides,
            ],
        )
    evaluate(cfg)
    out = tmp_path / "out"
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_each_corpus_is_encoded_once_per_command(tmp_path, corpus_encodes, monkeypatch):
    """Before: the Evaluator and the decision table each encoded base and tuned corpora (4 encodes); now 2."""
    import embedexp.eval.decision_plot
    import embedexp.eval.results

    # the plots cost most of this test's CPU time and are tested in test_decision_table.py / test_plots.py
    monkeypatch.setattr(embedexp.eval.results, "write_plots", lambda *a, **k: None)
    monkeypatch.setattr(embedexp.eval.decision_plot, "plot_decision", lambda *a, **k: None)
    results, md = _evaluate(tmp_path)
    assert len(corpus_encodes) == 2 and len({who for who, _ in corpus_encodes}) == 2, corpus_encodes
    rows = results["decision"]["sets"]["demo_test"]["rows"]
    metrics = results["metrics"]
    assert [r["name"] for r in rows] == ["bi-encoder base", "bi-encoder tuned"]
    assert rows[0]["ndcg@10"] == pytest.approx(metrics["demo_test/ndcg@10"]["base"], abs=1e-12)
    assert rows[1]["ndcg@10"] == pytest.approx(metrics["demo_test/ndcg@10"]["tuned"], abs=1e-12)
    assert md.count("precomputed, not timed") == 2  # both corpora reused
    # second run: the base results come from the eval cache (no encode there), so the table encodes base's corpus
    corpus_encodes.clear()
    again, md = _evaluate(tmp_path)
    assert len(corpus_encodes) == 2 and len({who for who, _ in corpus_encodes}) == 2, corpus_encodes
    offline = again["decision"]["sets"]["demo_test"]["offline"]
    assert offline[0]["seconds"] is not None and offline[1]["seconds"] is None
    assert again["decision"]["sets"]["demo_test"]["rows"][0]["ndcg@10"] == rows[0]["ndcg@10"]


def test_recorder_keeps_only_watched_lists_at_their_precision(demo_set, tiny_model_dir):
    from embedexp.eval.decision import EncodeRecorder
    from embedexp.models import Encoder

    enc = Encoder(str(tiny_model_dir))
    rec = EncodeRecorder([demo_set])
    with rec.watch("bi-encoder base", enc):
        d = enc.encode(demo_set.docs, "document", 64)
        enc.encode(list(demo_set.docs), "document", 64)  # an equal list, but not the set's: not kept
        q = enc.encode(demo_set.queries, kind="query")
    assert "encode" not in vars(enc)  # the class method is back
    assert rec.take("bi-encoder base", demo_set.name, "document", "bf16") is None  # computed in fp32
    with rec.watch("bi-encoder base", enc):
        enc.encode(demo_set.docs, "document", 64)
    assert rec.take("bi-encoder base", demo_set.name, "document", "fp32") is not None
    assert rec.take("bi-encoder base", demo_set.name, "document", "fp32") is None  # handed over once
    assert torch.equal(rec.take("bi-encoder base", demo_set.name, "query", "fp32"), q)
    assert d.shape[0] == len(demo_set.docs)


def test_chunked_scoring_gives_the_scores_of_one_call(ce_dir, demo_set, monkeypatch):
    """The progress/precision wrapper feeds the scorer whole mini-batches in the scorer's own order: same numbers."""
    from embedexp.eval.decision import _PairScorer
    from embedexp.miners.cross_encoder import CrossEncoderScorer

    inner = CrossEncoderScorer(ce_dir, max_length=64, device="cpu")
    qs = [demo_set.queries[i % len(demo_set.queries)] for i in range(37)]
    ds = [demo_set.docs[(7 * i) % len(demo_set.docs)] for i in range(37)]
    monkeypatch.setattr(_PairScorer, "CHUNK_BATCHES", 2)
    got = _PairScorer(inner, "fp32").score(qs, ds, batch_size=3, show_progress=True)
    assert np.array_equal(got, inner.score(qs, ds, 3))


class _Counting:
    """A stand-in cross-encoder: the length of the document minus the query's; records every pair it scores."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def score(self, queries, docs, batch_size=32, show_progress=False, desc=""):
        self.seen += list(zip(queries, docs))
        return np.array([float(len(d) - len(q)) for q, d in zip(queries, docs)])


def test_memo_scores_each_distinct_pair_once_and_is_off_when_none():
    from embedexp.eval.decision import _PairScorer

    inner = _Counting()
    scorer = _PairScorer(inner, "fp32")
    scorer.memo = {}
    a = (["q1", "q1", "q2"], ["doc a", "doc b", "doc a"])
    b = (["q1", "q2", "q2", "q3"], ["doc b", "doc a", "doc a", "doc ccc"])  # 2 seen before, one repeated
    assert scorer.new_pairs(set(zip(*b))) == 3
    assert scorer.score(*a).tolist() == [3.0, 3.0, 3.0] and len(inner.seen) == 3
    assert scorer.new_pairs(set(zip(*b))) == 1
    assert scorer.score(*b).tolist() == [3.0, 3.0, 3.0, 5.0]
    assert inner.seen[3:] == [("q3", "doc ccc")]
    scorer.memo = None  # the latency passes: everything is scored
    scorer.score(*b)
    assert len(inner.seen) == 8


def _native_bf16(monkeypatch, native: bool, slowdown: float = 10.0):
    import embedexp.trainer.inference as inference

    monkeypatch.setattr(inference, "native_bf16_flags", lambda: ["amx_bf16"] if native else [])
    monkeypatch.setattr(inference, "bf16_slowdown", lambda: slowdown)


def test_eval_precision_bf16_runs_bi_encoder_and_reranker_in_bf16(ce_dir, demo_set, tiny_model_dir, monkeypatch):
    from embedexp.eval.decision import decision_table, markdown
    from embedexp.eval.metrics import retrieve
    from embedexp.miners.cross_encoder import CrossEncoderScorer
    from embedexp.models import Encoder

    _native_bf16(monkeypatch, native=True)
    enc = Encoder(str(tiny_model_dir))
    settings = {"reranker": str(ce_dir), "top_k": 5, "bm25": False, "batch_sizes": [2], "max_queries_for_latency": 2}
    t = decision_table(demo_set, [("bi-encoder base", enc)], settings, stats=STATS, precision="bf16")
    assert t["precision"] == {"eval.precision": "bf16", "bi-encoder base": "bf16", "reranker": "bf16"}
    first, reranked = t["rows"]
    # the bi-encoder row: bf16-autocast embeddings (Encoder.encode's own bf16 path), not the fp32 ranking
    q = enc.encode(demo_set.queries, "query", 64, precision="bf16")
    d = enc.encode(demo_set.docs, "document", 64, precision="bf16")
    ref = retrieve(demo_set.query_ids, q, demo_set.doc_ids, d, 100, ignore_identical_ids=False)
    assert first.run == ref
    fp32 = retrieve(
        demo_set.query_ids, enc.encode(demo_set.queries, "query"), demo_set.doc_ids, enc.encode(demo_set.docs), 100
    )
    assert any(abs(a[1] - b[1]) > 1e-6 for qid in ref for a, b in zip(ref[qid], fp32[qid]))
    # the reranked heads: the cross-encoder's logits under bf16 autocast, computed independently (one call over the
    # same pairs and batch size, so the same forward batches)
    texts = dict(zip(demo_set.doc_ids, demo_set.docs))
    q_text = dict(zip(demo_set.query_ids, demo_set.queries))
    keys = [(qid, doc) for qid, ranked in first.run.items() for doc, _ in ranked[:5]]
    pairs = ([q_text[qid] for qid, _ in keys], [texts[doc] for _, doc in keys])
    scorer = CrossEncoderScorer(ce_dir, max_length=256, device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = dict(zip(keys, scorer.score(*pairs, 32).tolist()))
    got = {(qid, doc): s for qid, ranked in reranked.run.items() for doc, s in ranked[:5]}
    assert got == expected
    plain = dict(zip(keys, scorer.score(*pairs, 32).tolist()))
    assert max(abs(got[k] - plain[k]) for k in keys) > 1e-5  # not the fp32 logits
    md = markdown({demo_set.name: t}, settings, {"device": "cpu", "torch_threads": 1})
    assert "Precision (eval.precision=bf16): bi-encoder base bf16, reranker bf16." in md


def test_eval_precision_bf16_falls_back_with_one_warning(ce_dir, demo_set, tiny_model_dir, monkeypatch, caplog):
    from embedexp.eval.decision import run_decision
    from embedexp.models import Encoder

    _native_bf16(monkeypatch, native=False, slowdown=10.0)
    enc = Encoder(str(tiny_model_dir))
    settings = {"reranker": str(ce_dir), "top_k": 3, "bm25": False, "batch_sizes": [4], "max_queries_for_latency": 4}
    with caplog.at_level(logging.WARNING, logger="embedexp.trainer"):
        (t,) = run_decision([demo_set], [("bi-encoder base", enc)], settings, 64, STATS, False, "bf16").values()
    assert t["precision"] == {"eval.precision": "bf16", "bi-encoder base": "fp32", "reranker": "fp32"}
    warnings = [r.getMessage() for r in caplog.records if "eval.precision=bf16" in r.getMessage()]
    assert len(warnings) == 1 and "encoding in fp32 instead" in warnings[0], warnings


def test_stages_log_start_and_rate_lines(ce_dir, demo_set, tiny_model_dir, caplog):
    from embedexp.eval.decision import decision_table
    from embedexp.models import Encoder

    enc = Encoder(str(tiny_model_dir))
    settings = {"reranker": str(ce_dir), "top_k": 3, "batch_sizes": [4], "max_queries_for_latency": 4}
    with caplog.at_level(logging.INFO, logger="embedexp.progress"):
        t = decision_table(demo_set, [("bi-encoder base", enc)], settings, stats=STATS)
    lines = [r.getMessage() for r in caplog.records if r.name == "embedexp.progress"]
    n_docs, name = len(demo_set.docs), demo_set.name
    assert f"{name}: BM25: indexing {n_docs} documents ..." in lines
    assert f"{name}: bi-encoder base: encoding (fp32) {n_docs} documents ..." in lines
    assert any(line.startswith(f"{name}: bi-encoder base: {n_docs} documents in ") for line in lines)
    done = [line for line in lines if line.startswith(f"{name}: BM25 + reranker: ") and "new pairs/s)" in line]
    assert len(done) == 1, lines
    # the quality passes score each distinct (query, document) pair once: the base row scores only pairs that the
    # BM25 row did not (counted here from the rows' own first-stage rankings)
    rows = {r.name: r for r in t["rows"]}
    q_text, d_text = dict(zip(demo_set.query_ids, demo_set.queries)), dict(zip(demo_set.doc_ids, demo_set.docs))

    def pairs(run):
        return {(q_text[q], d_text[d]) for q, ranked in run.items() for d, _ in ranked[:3]}

    bm25, dense = pairs(rows["BM25"].run), pairs(rows["bi-encoder base"].run)
    assert 0 < len(bm25 & dense) < len(dense)
    start = f"{name}: bi-encoder base + reranker: reranking (fp32; {len(bm25 & dense)} of {len(dense)} distinct pairs "
    assert any(line.startswith(start) for line in lines), lines
    assert any(
        line.startswith(f"{name}: bi-encoder base + reranker: {len(dense - bm25)} new pairs in ") for line in lines
    )
    assert any("latency at batch 4: 4 queries in " in line and "queries/s)" in line for line in lines), lines
