"""results.md / results.json / per_query.jsonl / PNGs carry the paired evidence computed from per-unit values."""

import json

import numpy as np
import pytest
from scipy import stats as sps

from embedexp.eval.results import compare, write_results

PNG = b"\x89PNG\r\n\x1a\n"


def _units(seed=0, n=60, shift=0.1):
    rng = np.random.default_rng(seed)
    ids = [f"q{i}" for i in range(n)]
    b = rng.uniform(0, 1, n)
    t = np.clip(b + rng.normal(shift, 0.1, n), 0, 1)
    gold = rng.uniform(0, 5, 80)
    bs, ts = gold + rng.normal(0, 0.5, 80), gold + rng.normal(0, 3, 80)
    pids = [f"p{i}" for i in range(80)]
    units = {
        "base": {
            "ret/ndcg@10": {"ids": ids, "values": b.tolist()},
            "sts/spearman": {"ids": pids, "scores": bs.tolist(), "gold": gold.tolist(), "method": "spearman"},
        },
        "tuned": {
            "ret/ndcg@10": {"ids": ids[::-1], "values": t[::-1].tolist()},  # other order: paired by id
            "sts/spearman": {"ids": pids, "scores": ts.tolist(), "gold": gold.tolist(), "method": "spearman"},
        },
    }
    base = {"ret/ndcg@10": b.mean(), "ret/recall@100": 0.5, "sts/spearman": sps.spearmanr(bs, gold).statistic}
    tuned = {"ret/ndcg@10": t.mean(), "ret/recall@100": 0.6, "sts/spearman": sps.spearmanr(ts, gold).statistic}
    return base, tuned, units, (b, t)


def test_rows_get_statistics_paired_by_id():
    base, tuned, units, (b, t) = _units()
    rows = compare(base, tuned, units, {"n_resamples": 2000})
    r = rows["ret/ndcg@10"]
    assert r["delta"] == pytest.approx(np.mean(t - b))
    assert r["ci_low"] < r["delta"] < r["ci_high"] and r["ci_low"] > 0
    assert r["wins"] + r["losses"] + r["ties"] == 60 and r["wins"] == int((t > b).sum())
    assert r["verdict"] == "better"
    assert rows["sts/spearman"]["verdict"] == "worse"
    assert "verdict" not in rows["ret/recall@100"]  # no per-query values: point estimate only
    ps = sorted(r["p"] for r in rows.values() if "p" in r)  # Holm over the 2 tested rows: smallest p x 2
    assert min(r["p_holm"] for r in rows.values() if "p" in r) == pytest.approx(min(1.0, 2 * ps[0]))


def test_written_files(tmp_path):
    base, tuned, units, _ = _units()
    texts = {"ret": {f"q{i}": f"question number {i}" for i in range(60)}}
    rows = write_results(tmp_path, base, tuned, {"title": "t"}, units, texts, {"n_resamples": 2000})
    md = (tmp_path / "results.md").read_text()
    assert "| metric | base | fine-tuned | delta | 95% CI | p (Holm) | W/L/T | verdict |" in md
    assert "## Verdict" in md and "**ret/ndcg@10**: better" in md
    assert "### ret/ndcg@10: largest losses" in md and "question number" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"]["ret/ndcg@10"]["ci_low"] == rows["ret/ndcg@10"]["ci_low"]
    assert saved["statistics"]["n_resamples"] == 2000
    records = [json.loads(line) for line in (tmp_path / "per_query.jsonl").read_text().splitlines()]
    q0 = next(r for r in records if r["set"] == "ret" and r["id"] == "q0")
    assert q0["base"]["ndcg@10"] == units["base"]["ret/ndcg@10"]["values"][0]
    assert q0["tuned"]["ndcg@10"] == units["tuned"]["ret/ndcg@10"]["values"][-1] and q0["text"] == "question number 0"
    assert len([r for r in records if r["set"] == "sts"]) == 80
    for name in ("deltas.png", "per_query.png", "base_vs_tuned.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG, name


def test_no_units_no_statistics(tmp_path):
    base, tuned, _, _ = _units()
    write_results(tmp_path, base, tuned, {"title": "t"})
    assert not (tmp_path / "per_query.jsonl").exists() and not (tmp_path / "deltas.png").exists()
    assert "p (Holm)" not in (tmp_path / "results.md").read_text()


def test_evaluator_units_equal_pytrec_eval_per_query_and_cache_per_set(tmp_path, tiny_model_dir, monkeypatch):
    import pytrec_eval

    from embedexp.eval import Evaluator
    from embedexp.eval.metrics import retrieve
    from embedexp.models import Encoder

    from conftest import DEMO

    enc = Encoder(str(tiny_model_dir))
    ret = {"demo_test": {"type": "retrieval", "root": str(DEMO), "split": "test"}}
    sts = {"demo_sts": {"type": "sts", "path": str(DEMO / "sts.tsv")}}
    ev = Evaluator(ret, cache_dir=str(tmp_path), show_progress=False)
    metrics = ev.evaluate(enc, use_cache=True)
    units = ev.last_units["demo_test/ndcg@10"]
    assert np.mean(units["values"]) == pytest.approx(metrics["demo_test/ndcg@10"])
    s = ev.sets[0]
    q = enc.encode(s.queries, "query", show_progress=False)
    d = enc.encode(s.docs, "document", show_progress=False)
    run = retrieve(s.query_ids, q, s.doc_ids, d, 100)
    ref = pytrec_eval.RelevanceEvaluator(s.qrels, {"ndcg_cut.10"}).evaluate({k: dict(v) for k, v in run.items()})
    assert units["values"] == pytest.approx([ref[qid]["ndcg_cut_10"] for qid in units["ids"]], abs=1e-9)

    # adding a set re-encodes only that set; the first comes from its own cache entry with its per-query values
    both = Evaluator({**ret, **sts}, cache_dir=str(tmp_path), show_progress=False)
    encoded = []
    real = Encoder.encode
    monkeypatch.setattr(
        Encoder, "encode", lambda self, texts, *a, **k: encoded.append(k.get("desc") or a) or real(self, texts, *a, **k)
    )
    again = both.evaluate(enc, use_cache=True)
    assert all("demo_sts" in str(e) for e in encoded) and len(encoded) == 2
    assert again["demo_test/ndcg@10"] == metrics["demo_test/ndcg@10"]
    assert both.last_units["demo_test/ndcg@10"] == units
    assert both.last_units["demo_sts/spearman"]["gold"] == [float(x) for x in both.sets[1].scores]


def test_pairs_eval_set_matches_sentence_transformers_ir_evaluator(tmp_path, tiny_model_dir):
    """A `type: pairs` eval set scores like sentence-transformers' InformationRetrievalEvaluator fed the same way."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    from embedexp.eval import Evaluator
    from embedexp.models import Encoder

    rows = [
        ("how do I reset my password", "Use the account page to reset a password.", "Printers need toner."),
        ("printer out of toner", "Printers need toner.", "Restart the router."),
        ("wifi keeps dropping", "Restart the router.", "Use the account page to reset a password."),
        ("forgot my password", "Use the account page to reset a password.", "Restart the router."),
        ("laptop will not charge", "Check the charger cable and the outlet.", "Printers need toner."),
    ]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps({"anchor": a, "positive": p, "negatives": [n]}) + "\n" for a, p, n in rows))
    ev = Evaluator({"dev": {"type": "pairs", "path": str(path)}}, show_progress=False, ndcg_at=[10], mrr_at=[10])
    s = ev.sets[0]
    assert len(s.query_ids) == 5 and len(s.doc_ids) == 4  # distinct anchors; distinct positive/negative texts
    assert s.qrels["q0"] == {"d0": 1} and s.qrels["q3"] == {"d0": 1}
    enc = Encoder(str(tiny_model_dir))
    ours = ev.evaluate(enc)
    model_dir = enc.save(tmp_path / "model")
    st = InformationRetrievalEvaluator(
        dict(zip(s.query_ids, s.queries)),
        dict(zip(s.doc_ids, s.docs)),
        {q: set(d) for q, d in s.qrels.items()},
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[10],
        map_at_k=[10],
        name="dev",
    )
    theirs = st(SentenceTransformer(str(model_dir)))
    assert ours["dev/ndcg@10"] == pytest.approx(theirs["dev_cosine_ndcg@10"], abs=1e-6)
    assert ours["dev/mrr@10"] == pytest.approx(theirs["dev_cosine_mrr@10"], abs=1e-6)
