"""Cross-encoder (reranker) training: losses against sentence-transformers, the CrossEncoder export round trip,
end-to-end runs with each loss on the demo data, the BM25 first stage against rank_bm25, and the refusal lines."""

import json
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from embedexp.config import config_dir, register_resolvers
from embedexp.errors import ConfigError

ROWS = [
    ("how do I reset my password", "Open settings and choose reset password.", "The cafeteria opens at 8.", "VPN"),
    ("printer is jammed", "Remove the paper tray and pull the stuck sheet out.", "Password rules", "Holidays 2026"),
    ("vpn drops every hour", "Renew the VPN certificate in the client.", "Printer toner order form", "Parking"),
]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """Our tiny cross-encoder (new head, seeded) and its export folder."""
    from embedexp.models.cross_encoder import CrossEncoderModel

    torch.manual_seed(0)
    model = CrossEncoderModel(str(tiny_model_dir), max_length=24)
    with torch.no_grad():  # a head far from zero, so the compared logits are not all tiny
        model.model.classifier.weight.normal_(0, 1.0)
        model.model.classifier.bias.fill_(0.3)
    return model, model.save(tmp_path_factory.mktemp("ce") / "model")


def _st(path):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(path), device="cpu")
    ce.eval()
    return ce


def _our_logits(model):
    from embedexp.losses.rerank_listwise import RerankListwiseLoss
    from embedexp.rerank_module import RerankModule

    module = RerankModule(model, RerankListwiseLoss())
    model.eval()
    texts = [[r[c] for r in ROWS] for c in range(4)]
    return module.pair_logits(texts)


def test_export_round_trip_sentence_transformers_scorer_and_rerank(exported):
    from embedexp.eval.rerank import Reranker
    from embedexp.miners.cross_encoder import CrossEncoderScorer
    from embedexp.models.cross_encoder import CrossEncoderModel

    model, path = exported
    long_doc = " ".join(["the renewal of certificates takes a while"] * 20)  # truncated at max_length=24
    queries = [r[0] for r in ROWS] + ["vpn"]
    docs = [r[1] for r in ROWS] + [long_doc]
    ours = model.score(queries, docs, batch_size=2)
    assert ours.std() > 1e-3  # distinct scores, so the comparison can fail
    ce = _st(path)
    assert ce.config.num_labels == 1 and type(ce.activation_fn).__name__ == "Identity"
    # predict() returns the raw logit (our export sets activation_fn=Identity) ...
    np.testing.assert_allclose(ce.predict(list(zip(queries, docs))), ours, atol=1e-5)
    # ... and ST's own default for one label, a sigmoid, gives sigmoid(our score)
    sig = ce.predict(list(zip(queries, docs)), activation_fn=torch.nn.Sigmoid())
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-ours)), atol=1e-6)
    np.testing.assert_allclose(CrossEncoderScorer(path, max_length=24).score(queries, docs), ours, atol=1e-5)
    reranker = Reranker(model=str(path), top_k=5, max_length=24)
    np.testing.assert_allclose(reranker.scorer().score(queries, docs), ours, atol=1e-5)
    again = CrossEncoderModel.from_exported(path)
    assert again.max_length == 24
    np.testing.assert_allclose(again.score(queries, docs), ours, atol=1e-6)


def test_listwise_loss_equals_sentence_transformers_and_hand(exported):
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    from embedexp.losses.rerank_listwise import RerankListwiseLoss

    model, path = exported
    logits = _our_logits(model)  # (3, 3): positive, negative_1, negative_2
    ce = _st(path)
    st_loss = MultipleNegativesRankingLoss(ce, num_negatives=None, activation_fn=None, scale=2.0)
    cols = [[r[c] for r in ROWS] for c in range(4)]
    with torch.no_grad():
        # ST's forward without its in-batch negatives: the row's own columns through ST's model and calculate_loss
        st_scores = [st_loss.call_model_with_columns(cols[0], cols[c]) for c in (1, 2, 3)]
        expected = st_loss.calculate_loss(st_scores, len(ROWS))
        ours = RerankListwiseLoss(scale=2.0)(logits)
    assert float(ours) == pytest.approx(float(expected), abs=1e-5)
    hand = np.mean([-2 * row[0] + math.log(sum(math.exp(2 * v) for v in row)) for row in logits.tolist()])
    assert float(ours) == pytest.approx(hand, abs=1e-5)


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_bce_loss_equals_sentence_transformers_and_hand(exported, pos_weight):
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from embedexp.losses.rerank_bce import RerankBCELoss

    model, path = exported
    logits = _our_logits(model)
    ce = _st(path)
    w = None if pos_weight is None else torch.tensor(pos_weight)
    st_loss = BinaryCrossEntropyLoss(ce, pos_weight=w)
    pairs_q = [r[0] for r in ROWS for _ in range(3)]
    pairs_d = [r[c] for r in ROWS for c in (1, 2, 3)]
    labels = torch.tensor([1.0, 0.0, 0.0] * len(ROWS))
    with torch.no_grad():
        expected = st_loss([pairs_q, pairs_d], labels)
        ours = RerankBCELoss(pos_weight=pos_weight)(logits)
    assert float(ours) == pytest.approx(float(expected), abs=1e-5)
    wt = pos_weight or 1.0
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    terms = [
        -(wt * math.log(sig(v)) if j == 0 else math.log(1 - sig(v)))
        for row in logits.tolist()
        for j, v in enumerate(row)
    ]
    assert float(ours) == pytest.approx(float(np.mean(terms)), abs=1e-5)


def test_bm25_first_stage_equals_rank_bm25(tmp_path):
    from rank_bm25 import BM25Okapi

    from embedexp.eval.metrics import trec_order
    from embedexp.eval.reranker_run import bm25_run
    from embedexp.eval.sets import RetrievalSet
    from embedexp.miners.tokenize import Tokenizer

    docs = ["red apple pie", "apple", "green apple tart", "pie crust recipe", "blue car", "apple apple pie", "x"]
    doc_ids = ["d3", "d1", "d7", "d2", "d5", "d9", "d4"]
    s = RetrievalSet("t", ["q1", "q2"], ["apple pie", "car"], doc_ids, docs, {"q1": {"d3": 1}, "q2": {"d5": 1}}, "f")
    run, _ = bm25_run(s, k=3)
    tok = Tokenizer()
    bm = BM25Okapi(tok.many(docs))
    for qid, q in zip(s.query_ids, s.queries):
        scores = bm.get_scores(tok(q))
        ref = trec_order([(d, float(x)) for d, x in zip(doc_ids, scores) if x > 0])[:3]
        assert [d for d, _ in run[qid]] == [d for d, _ in ref]
        np.testing.assert_allclose([x for _, x in run[qid]], [x for _, x in ref])
    assert len(run["q2"]) == 1  # only one document matches "car": zero scores are not retrieved


def _cfg(out, *overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=demo_tiny",
                "model=cross_encoder_tiny",
                "model.max_length=48",
                "miner=bm25",
                "miner.n_negatives=2",
                "miner.show_progress=false",
                f"paths.output_dir={out}",
                f"paths.cache_dir={out.parent / 'cache'}",
                "trainer.max_steps=3",
                "eval.rerank.top_k=5",
                "logger=none",
                *overrides,
            ],
        )


@pytest.mark.parametrize("loss", ["rerank_listwise", "rerank_bce"])
def test_tiny_reranker_trains_on_demo_data(loss, tmp_path):
    from sentence_transformers import CrossEncoder

    from embedexp.train import train

    out = tmp_path / "out"
    train(_cfg(out, f"loss={loss}"))
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3 and results["loss"] == {"rerank_listwise": "RerankListwiseLoss"}.get(
        loss, "RerankBCELoss"
    )
    rows = results["metrics"]
    assert "demo_test/ndcg@10" in rows and "verdict" in rows["demo_test/ndcg@10"]
    assert not any(k.startswith("demo_sts") for k in rows)  # STS sets are skipped in a reranker run
    first = results["first_stage"]
    assert first["name"] == "bm25" and first["top_k"] == 5
    # the reranker only re-orders the top 5: recall@10 and @100 are the first stage's
    for m in ("recall@10", "recall@100"):
        assert rows[f"demo_test/{m}"]["base"] == rows[f"demo_test/{m}"]["tuned"] == first["metrics"][f"demo_test/{m}"]
    assert "bm25 alone vs bm25 + tuned reranker" in (out / "results.md").read_text()
    # the export is the trained model: ST's CrossEncoder gives the same scores as a fresh evaluation of it
    ce = CrossEncoder(str(out / "model"), device="cpu")
    from embedexp.models.cross_encoder import CrossEncoderModel

    pairs = [("printer jam", "remove the tray"), ("vpn", "certificate renewal")]
    ours = CrossEncoderModel.from_exported(out / "model").score([p[0] for p in pairs], [p[1] for p in pairs])
    np.testing.assert_allclose(ce.predict(pairs), ours, atol=1e-5)
    assert (out / "model" / "README.md").is_file() and not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model=cross_encoder_tiny", "loss=infonce"], "loss=InfoNCELoss is a bi-encoder (embedding) loss, but model="),
        (["model=tiny", "loss=rerank_listwise"], "trains a cross-encoder (reranker), but model=tiny-random-bert"),
        (
            ["model=cross_encoder_tiny", "loss=rerank_bce", "miner=none"],
            "loss=RerankBCELoss needs columns ('anchor', 'positive', 'negative_1')",
        ),
        (["model=cross_encoder_tiny", "loss=rerank_bce", "eval.rerank.model=/x"], "eval.rerank.model='/x'"),
        (["model=cross_encoder_tiny", "loss=rerank_bce", "trainer.grad_cache.chunk_size=2"], "GradCache caches"),
        (["model=cross_encoder_tiny", "loss=rerank_bce", "+eval.first_stage=bm26"], "eval.first_stage='bm26'"),
        (["+eval.first_stage=bm25"], "eval.first_stage='bm25' applies to reranker training runs only"),
        (["+eval.rerank_base=false"], "eval.rerank_base=False applies to reranker training runs only"),
    ],
)
def test_wrong_model_loss_combinations_are_one_line_errors(overrides, expected, tmp_path):
    from embedexp.train import train

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=demo_tiny",
                f"paths.output_dir={tmp_path / 'out'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "logger=none",
                *overrides,
            ],
        )
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "results.json").exists()


class _LengthScorer:
    """A stand-in reranker: shorter documents score higher (deterministic, unlike the first stage)."""

    def score(self, queries, docs, batch_size=32, show_progress=False, desc=""):
        return np.array([-float(len(d)) for d in docs])


def test_bi_encoder_first_stage_and_reranked_metrics_match_a_manual_pipeline(tiny_model_dir, tmp_path):
    from embedexp.eval.metrics import ir_metrics, retrieve
    from embedexp.eval.reranker_run import RerankerRunEvaluator
    from embedexp.models import Encoder

    from conftest import write_beir

    corpus = {f"d{i}": ("", "word " * (i + 1) + f"topic{i % 3}") for i in range(12)}
    queries = {"q1": "topic0 word", "q2": "topic1", "q3": "topic2 word word"}
    qrels = {"q1": {"d0": 1, "d3": 2}, "q2": {"d4": 1}, "q3": {"d11": 1}}
    root = write_beir(tmp_path / "beir", corpus, queries, qrels)
    spec = {"_target_": "embedexp.models.Encoder", "model_name_or_path": str(tiny_model_dir), "max_seq_length": 32}
    ev = RerankerRunEvaluator(
        {"t": {"type": "retrieval", "root": str(root), "split": "test"}},
        first_stage=spec,
        rerank={"top_k": 4, "batch_size": 2},
        show_progress=False,
    )
    got = ev.evaluate(_LengthScorer())
    s = ev.sets[0]
    enc = Encoder(str(tiny_model_dir), max_seq_length=32)
    # the first stage retrieves down to the deepest cutoff (Recall@100), the reranker re-orders its top 4 only
    run = retrieve(s.query_ids, enc.encode(s.queries, "query"), s.doc_ids, enc.encode(s.docs, "document"), 100)
    first, _, _ = ev.first_stage_results()
    assert first == {f"t/{k}": v for k, v in ir_metrics(run, s.qrels, **ev.ks).items()}
    text = dict(zip(s.doc_ids, s.docs))
    reranked = {}
    for q, ranked in run.items():
        head = sorted(ranked[:4], key=lambda x: len(text[x[0]]))  # shortest first (lengths are distinct)
        tail = ranked[4:]
        n = len(head) + len(tail)
        reranked[q] = [(d, float(n - i)) for i, (d, _) in enumerate(head + tail)]
    expected = {f"t/{k}": v for k, v in ir_metrics(reranked, s.qrels, **ev.ks).items()}
    assert {k: v for k, v in got.items() if "ms_per_query" not in k} == expected
    assert expected != first  # the reranker changed the order, so the comparison means something


def test_reranker_crash_then_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    """The shared checkpointing: a reranker run that dies after step 3 (checkpoint at step 2) and is resumed with
    ckpt_path=last ends with the same weights and metrics as a run that never stopped."""
    from safetensors.torch import load_file

    import embedexp.checkpointing as ck
    from embedexp.train import train

    args = ["loss=rerank_listwise", "trainer.max_steps=4", "checkpoint.every_n_steps=2", "eval.rerank.top_k=2"]
    full, crashed = tmp_path / "full" / "out", tmp_path / "crashed" / "out"
    train(_cfg(full, *args))
    original = ck.ResumableCheckpoint.on_train_batch_end

    def crash_after_step_3(self, trainer, *a, **kw):
        original(self, trainer, *a, **kw)
        if trainer.global_step == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(ck.ResumableCheckpoint, "on_train_batch_end", crash_after_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_cfg(crashed, *args))
    assert not (crashed / "results.json").exists() and (crashed / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(ck.ResumableCheckpoint, "on_train_batch_end", original)
    train(_cfg(crashed, *args, "ckpt_path=last"))
    a, b = json.loads((full / "results.json").read_text()), json.loads((crashed / "results.json").read_text())
    assert a["steps"] == b["steps"] == 4 and b["resumed_from"].endswith("last.ckpt")
    wa, wb = (load_file(str(run / "model" / "model.safetensors")) for run in (full, crashed))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    tuned = [{k: v["tuned"] for k, v in r["metrics"].items() if "ms_per_query" not in k} for r in (a, b)]
    assert tuned[0] == tuned[1]


def test_evaluate_refuses_a_cross_encoder_preset_in_one_line(tmp_path):
    from embedexp.evaluate import evaluate

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=["data=demo", "model=cross_encoder_tiny", f"paths.output_dir={tmp_path / 'out'}"],
        )
    with pytest.raises(ConfigError, match=r"model=cross-encoder-tiny-random-bert is a cross-encoder \(reranker\)"):
        evaluate(cfg)
