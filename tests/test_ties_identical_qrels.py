"""Issue 14, items 1-3: tie order, identical query/document ids, non-integer qrels grades.

Independent references:
- pytrec_eval (trec_eval 9): ranks a query's documents by score descending, then document id descending
  (trec_eval's form_res_rels.c, `comp_sim_docno`: `strcmp(ptr2->docno, ptr1->docno)` on equal sims).
  It is always given the FULL run (every document of the corpus with its score), so its ranking at the
  cut-off is trec_eval's own, not ours.
- the real mteb package (2.x), which scores with pytrec_eval and tie-breaks its MRR the same way; its
  per-query scores are captured before it rounds the means to 5 decimals.
- hand-worked examples from the issue (toy tie case: nDCG@10 = 1/log2(3) = 0.6309, RR = 0.5;
  integer ids: 4 queries each ranking its relevant document first = 1.0, or 0.75 with one dropped).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
import torch

from embedexp.data import readers
from embedexp.data.readers import load_qrels
from embedexp.errors import ConfigError, DataError
from embedexp.eval.metrics import ir_metrics, retrieve, top_k
from embedexp.eval.mteb_eval import prepare_environment

from conftest import write_beir

prepare_environment(Path(tempfile.gettempdir()) / "embedexp-test")  # before mteb is imported: no ~/.cache/mteb


# --------------------------------------------------------------------------- helpers


class LookupEncoder:
    """A stand-in Encoder whose embedding of a text is looked up in a table (no model, exact ties by design)."""

    def __init__(self, vectors: dict[str, list[float]], name: str = "lookup"):
        self.vectors = {t: torch.tensor(v, dtype=torch.float32) for t, v in vectors.items()}
        self.name = name
        self.prefixes = {"query": "", "document": ""}
        self.max_seq_length = 32
        self.dim = len(next(iter(vectors.values())))

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        for t in sorted(self.vectors):
            h.update(t.encode() + self.vectors[t].numpy().tobytes())
        return h.hexdigest()

    def encode(self, texts, kind="document", batch_size=64, show_progress=False, desc=None):
        return torch.stack([self.vectors[t] for t in texts])


def _trec_full_run(query_ids, q, doc_ids, d):
    """Every document with its cosine score (float64), as one would hand to trec_eval."""
    q = np.asarray(q, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    return {qid: {did: float(sim[i, j]) for j, did in enumerate(doc_ids)} for i, qid in enumerate(query_ids)}, sim


def _pytrec(full_run, qrels, ndcg_at, recall_at, map_at, mrr_at):
    measures = {
        "ndcg_cut." + ",".join(map(str, ndcg_at)),
        "recall." + ",".join(map(str, recall_at)),
        "map_cut." + ",".join(map(str, map_at)),
    }
    per_q = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(full_run)
    out = {}
    for k in ndcg_at:
        out[f"ndcg@{k}"] = float(np.mean([per_q[q][f"ndcg_cut_{k}"] for q in qrels]))
    for k in recall_at:
        out[f"recall@{k}"] = float(np.mean([per_q[q][f"recall_{k}"] for q in qrels]))
    for k in map_at:
        out[f"map@{k}"] = float(np.mean([per_q[q][f"map_cut_{k}"] for q in qrels]))
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(full_run)
    for k in mrr_at:  # trec_eval's reciprocal rank of the full run, zero when the first hit is below rank k
        out[f"mrr@{k}"] = float(
            np.mean(
                [
                    rr[q]["recip_rank"] if 0 < rr[q]["recip_rank"] and 1 / rr[q]["recip_rank"] <= k + 1e-9 else 0.0
                    for q in qrels
                ]
            )
        )
    return out


# --------------------------------------------------------------------------- item 1: ties


def test_toy_tie_matches_pytrec_eval():
    """The issue's toy case: a1 and z1 tie at 1.0; trec_eval puts z1 (larger id) first."""
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    doc_ids = ["a1", "z1", "x"]
    qrels = {"q1": {"a1": 1}}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank"}).evaluate(
        {"q1": {"a1": 1.0, "z1": 1.0, "x": 0.0}}
    )["q1"]
    assert ref["ndcg_cut_10"] == pytest.approx(1 / math.log2(3), abs=1e-12)  # 0.6309, hand-worked
    assert ref["recip_rank"] == 0.5
    run = retrieve(["q1"], q, doc_ids, d, k=10)
    assert [x for x, _ in run["q1"]] == ["z1", "a1", "x"]
    m = ir_metrics(run, qrels, ndcg_at=(10,), recall_at=(10,), mrr_at=(10,), map_at=(10,))
    assert m["ndcg@10"] == pytest.approx(ref["ndcg_cut_10"], abs=1e-12)  # was 1.0
    assert m["mrr@10"] == pytest.approx(ref["recip_rank"], abs=1e-12)  # was 1.0


def test_ir_metrics_orders_an_unsorted_or_corpus_ordered_run_like_trec_eval():
    """A run handed over in any order (e.g. a reranker's, or corpus order on ties) is ranked by trec_eval's rule."""
    qrels = {"q1": {"a1": 1, "b": 2}}
    for run in (
        {"q1": [("a1", 1.0), ("z1", 1.0), ("x", 0.0), ("b", 0.5)]},
        {"q1": [("x", 0.0), ("b", 0.5), ("a1", 1.0), ("z1", 1.0)]},
    ):
        ours = ir_metrics(run, qrels, ndcg_at=(1, 3, 10), recall_at=(1, 3), mrr_at=(1, 3), map_at=(3,))
        full = {"q1": dict(run["q1"])}
        ref = _pytrec(full, qrels, (1, 3, 10), (1, 3), (3,), (1, 3))
        assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_top_k_cut_inside_a_tie_group_keeps_the_largest_ids(chunk_size):
    """k falls inside a group of tied documents: trec_eval keeps the tied ones with the largest ids."""
    g = torch.Generator().manual_seed(5)
    protos = torch.randn(4, 6, generator=g)
    assign = [0, 1, 1, 1, 1, 1, 1, 2, 3, 1, 1, 0]  # prototype 1 = a big tie group
    d = protos[assign]
    doc_ids = ["7", "10", "9", "100", "2", "31", "8", "11", "5", "99", "1", "300"]
    q = protos[1:2] + 0.05 * torch.randn(1, 6, generator=g)
    full, sim = _trec_full_run(["q"], q.numpy(), doc_ids, d.numpy())
    trec_order = [x for x, _ in sorted(full["q"].items(), key=lambda t: (t[1], t[0]), reverse=True)]
    for k in (1, 2, 4, 6, 8, 9, 12):
        scores, idx = top_k(q, d, k, chunk_size=chunk_size, doc_ids=doc_ids)
        assert [doc_ids[j] for j in idx[0].tolist()] == trec_order[:k], k
        run = retrieve(["q"], q, doc_ids, d, k)
        assert [x for x, _ in run["q"]] == trec_order[:k], k


def _tie_heavy_data(seed: int = 0):
    """Corpus whose documents are copies of 7 prototype vectors (big exact tie groups), integer-like ids
    of different lengths ("9" > "10" as strings) in shuffled corpus order, integer query ids."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(7, 8))
    n_docs, n_q = 90, 14
    doc_ids = [str(x) for x in rng.choice(2000, size=n_docs, replace=False)]
    assign = rng.integers(0, 7, size=n_docs)
    d = protos[assign]
    query_ids = [str(i) for i in range(n_q)]
    near = rng.integers(0, 7, size=n_q)
    q = protos[near] + 0.3 * rng.normal(size=(n_q, 8))
    qrels = {}
    for qi, qid in enumerate(query_ids):
        # judged documents: some from the tie group the query is nearest to (ties at the top), some anywhere
        group = np.flatnonzero(assign == near[qi])
        top = rng.choice(group, size=min(len(group), int(rng.integers(1, 4))), replace=False)
        anywhere = rng.choice(n_docs, size=int(rng.integers(1, 5)), replace=False)
        picks = list(dict.fromkeys([*top.tolist(), *anywhere.tolist()]))
        qrels[qid] = {doc_ids[j]: int(rng.integers(0, 3)) for j in picks}
        qrels[qid][doc_ids[picks[0]]] = int(rng.integers(1, 3))  # at least one relevant document
    return query_ids, q, doc_ids, d, qrels


def test_many_ties_retrieve_and_metrics_match_pytrec_eval_on_the_full_run():
    query_ids, q, doc_ids, d, qrels = _tie_heavy_data(0)
    full, sim = _trec_full_run(query_ids, q, doc_ids, d)
    # precondition: scores of DIFFERENT prototypes are far apart (float32 cannot reorder them); ties are exact
    for row in sim:
        u = np.unique(np.round(row, 9))
        assert len(u) <= 7 and (len(u) == 1 or np.min(np.diff(u)) > 1e-4)
    ks = dict(ndcg_at=(1, 3, 5, 10, 20), recall_at=(1, 5, 10, 20), mrr_at=(1, 3, 10), map_at=(1, 10, 20))
    ref = _pytrec(full, qrels, ks["ndcg_at"], ks["recall_at"], ks["map_at"], ks["mrr_at"])
    for k in (20, 25):  # retrieval depth; metrics at <= 20 must not depend on it
        run = retrieve(
            query_ids, torch.tensor(q, dtype=torch.float32), doc_ids, torch.tensor(d, dtype=torch.float32), k
        )
        ours = ir_metrics(run, qrels, **ks)
        for name in ref:
            assert ours[name] == pytest.approx(ref[name], abs=1e-9), (k, name)
    assert 0.05 < ref["ndcg@10"] < 0.95  # non-trivial


# --------------------------------------------------------------------------- evaluator + mteb


def _write_set(root: Path, query_ids, q, doc_ids, d, qrels):
    """BEIR folder + a LookupEncoder mapping each query/document text to its vector."""
    corpus = {did: ("", f"document {did}") for did in doc_ids}
    queries = {qid: f"query {qid}" for qid in query_ids}
    write_beir(root, corpus, queries, qrels)
    vectors = {f"document {did}": list(map(float, v)) for did, v in zip(doc_ids, d)}
    vectors.update({f"query {qid}": list(map(float, v)) for qid, v in zip(query_ids, q)})
    return LookupEncoder(vectors)


def _run_ours_and_mteb(root, encoder, cache_dir, monkeypatch, extra_spec=None):
    pytest.importorskip("mteb.evaluate")
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    from embedexp.eval import Evaluator

    captured = {}
    original = AbsTaskRetrieval.task_specific_scores

    def spy(self, scores, qrels, results, hf_split, hf_subset):
        captured["per_query"] = scores
        captured["results"] = results
        return original(self, scores, qrels, results, hf_split, hf_subset)

    monkeypatch.setattr(AbsTaskRetrieval, "task_specific_scores", spy)
    monkeypatch.setenv("MTEB_CACHE", str(cache_dir / "mteb"))
    spec = {"type": "retrieval", "root": str(root), "split": "test", **(extra_spec or {})}
    ev = Evaluator(
        {"ties": spec},
        cache_dir=str(cache_dir),
        show_progress=False,
        ndcg_at=[1, 3, 5, 10],
        recall_at=[1, 5, 10, 20],
        mrr_at=[1, 3, 10],
        map_at=[1, 10],
        mteb={"tasks": [], "local_sets": True, "metrics": None, "result_cache": False},
    )
    r = ev.evaluate(encoder)
    per_query = captured["per_query"]

    def mean(name):
        return sum(v[name] for v in per_query.values()) / len(per_query)

    mteb_vals = {f"ndcg@{k}": mean(f"ndcg_cut_{k}") for k in (1, 3, 5, 10)}
    mteb_vals.update({f"recall@{k}": mean(f"recall_{k}") for k in (1, 5, 10, 20)})
    mteb_vals.update({f"map@{k}": mean(f"map_cut_{k}") for k in (1, 10)})
    mteb_vals.update({f"mrr@{k}": r[f"mteb/ties/mrr_at_{k}"] for k in (1, 3, 10)})  # mteb does not round MRR
    ours = {name: r[f"ties/{name}"] for name in mteb_vals}
    return ours, mteb_vals, r


def test_evaluator_and_mteb_agree_with_pytrec_eval_on_many_ties(tmp_path, monkeypatch):
    """Same embeddings, same run: our evaluator == mteb == pytrec_eval (full run) to 1e-6, ties everywhere."""
    query_ids, q, doc_ids, d, qrels = _tie_heavy_data(1)
    enc = _write_set(tmp_path / "beir", query_ids, q, doc_ids, d, qrels)
    ours, theirs, r = _run_ours_and_mteb(tmp_path / "beir", enc, tmp_path / "cache", monkeypatch)
    full, _ = _trec_full_run(query_ids, q.astype(np.float32), doc_ids, d.astype(np.float32))
    ref = _pytrec(full, qrels, (1, 3, 5, 10), (1, 5, 10, 20), (1, 10), (1, 3, 10))
    for name in ref:
        assert ours[name] == pytest.approx(ref[name], abs=1e-6), ("ours vs pytrec_eval", name)
        assert theirs[name] == pytest.approx(ref[name], abs=1e-6), ("mteb vs pytrec_eval", name)
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), ("ours vs mteb", name)
    assert 0.05 < ours["ndcg@10"] < 0.95


# --------------------------------------------------------------------------- item 2: identical ids


def _integer_id_case():
    """Issue example: queries 0..3, documents 0..3, qrels 0->2, 1->0, 2->3, 3->3; each query's
    embedding is its relevant document's, so every relevant document ranks first."""
    eye = np.eye(4)
    ids = ["0", "1", "2", "3"]
    qrels = {"0": {"2": 1}, "1": {"0": 1}, "2": {"3": 1}, "3": {"3": 1}}
    q = eye[[2, 0, 3, 3]]
    return ids, q, ids, eye, qrels


def test_identical_ids_kept_by_default_like_pytrec_eval():
    query_ids, q, doc_ids, d, qrels = _integer_id_case()
    full, _ = _trec_full_run(query_ids, q, doc_ids, d)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(full)
    assert np.mean([v["ndcg_cut_10"] for v in ref.values()]) == 1.0
    run = retrieve(query_ids, torch.tensor(q), doc_ids, torch.tensor(d), k=10)
    assert ir_metrics(run, qrels, ndcg_at=(10,))["ndcg@10"] == 1.0  # was 0.75
    dropped = retrieve(query_ids, torch.tensor(q), doc_ids, torch.tensor(d), k=10, ignore_identical_ids=True)
    assert ir_metrics(dropped, qrels, ndcg_at=(10,))["ndcg@10"] == pytest.approx(0.75)


@pytest.mark.parametrize("ignore, expected", [(None, 1.0), (False, 1.0), (True, 0.75)])
def test_identical_ids_setting_reaches_evaluator_and_mteb(tmp_path, monkeypatch, caplog, ignore, expected):
    query_ids, q, doc_ids, d, qrels = _integer_id_case()
    enc = _write_set(tmp_path / "beir", query_ids, q, doc_ids, d, qrels)
    extra = {} if ignore is None else {"ignore_identical_ids": ignore}
    with caplog.at_level(logging.WARNING):
        ours, theirs, r = _run_ours_and_mteb(tmp_path / "beir", enc, tmp_path / "cache", monkeypatch, extra)
    assert ours["ndcg@10"] == pytest.approx(expected, abs=1e-12)
    assert theirs["ndcg@10"] == pytest.approx(expected, abs=1e-12)
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name
    warned = [m for m in caplog.messages if "ignore_identical_ids" in m]
    if ignore:
        assert warned and "'3'" in warned[0] and "ties" in warned[0]  # names the set and the query
    else:
        assert not warned


def test_ignore_identical_ids_must_be_a_boolean(tmp_path):
    from embedexp.eval.sets import load_eval_set

    root = write_beir(tmp_path / "b", {"d1": ("", "x")}, {"q1": "y"}, {"q1": {"d1": 1}})
    with pytest.raises(ConfigError, match=r"eval\.sets\.s\.ignore_identical_ids='yes'.*true or false"):
        load_eval_set("s", {"type": "retrieval", "root": str(root), "ignore_identical_ids": "yes"})
    a = load_eval_set("s", {"type": "retrieval", "root": str(root)})
    b = load_eval_set("s", {"type": "retrieval", "root": str(root), "ignore_identical_ids": True})
    assert a.ignore_identical_ids is False and b.ignore_identical_ids is True
    assert a.fingerprint != b.fingerprint  # the eval cache cannot mix the two settings


# --------------------------------------------------------------------------- item 3: qrels grades


@pytest.mark.parametrize("grade", ["0.9", "0.5", "1.5", "nan", "inf", "-0.5", "1e400"])
def test_non_integer_qrels_grade_is_an_error_naming_file_and_line(tmp_path, grade):
    root = write_beir(tmp_path / "b", {"d1": ("", "x"), "d2": ("", "y")}, {"q1": "a"}, {"q1": {"d1": 1}})
    path = root / "qrels" / "test.tsv"
    path.write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t{grade}\n")
    with pytest.raises(DataError) as err:
        load_qrels(root, "test")
    msg = str(err.value)
    assert msg.startswith(f"{path}: line 3: ") and "\n" not in msg
    detail = msg[len(f"{path}: line 3: ") :]  # (the tmp folder's name contains "integer" too)
    assert repr(grade) in detail and "expected an integer grade" in detail


def test_non_integer_qrels_grade_is_skipped_and_counted_with_on_error_skip(tmp_path):
    root = write_beir(tmp_path / "b", {"d1": ("", "x"), "d2": ("", "y")}, {"q1": "a"}, {"q1": {"d1": 1}})
    path = root / "qrels" / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2.0\nq1\td2\t0.9\nq1\td3\t-1\n")
    before = readers.SKIPPED[str(path)]
    qrels = load_qrels(root, "test", on_error="skip")
    # hand-worked: "2.0" is the whole number 2, "-1" a (trec_eval-legal) negative grade, "0.9" is dropped, not 0
    assert qrels == {"q1": {"d1": 2, "d3": -1}}
    assert readers.SKIPPED[str(path)] - before == 1


def test_ignore_identical_ids_is_checked_before_any_load_under_the_key_the_user_edits(tmp_path):
    from embedexp.eval.config import check_eval_config

    root = write_beir(tmp_path / "b", {"d1": ("", "x")}, {"q1": "y"}, {"q1": {"d1": 1}})
    ev = {"sets": {"arguana": {"type": "retrieval", "root": str(root), "ignore_identical_ids": "yes"}}}
    with pytest.raises(
        ConfigError, match=r"^data\.eval_sets\.arguana\.ignore_identical_ids='yes'; expected true or false$"
    ):
        check_eval_config(ev, None, "data.eval_sets")
    ev["sets"]["arguana"]["ignore_identical_ids"] = True
    check_eval_config(ev, None, "data.eval_sets")
