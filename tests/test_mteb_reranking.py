"""The local `reranking` type: mteb's Reranking task on a query/positive/negative jsonl gives the numbers of mteb's own
conversion + evaluator (with sentence-transformers as the model) and of a hand computation (sklearn's average
precision); a bad file is one line naming file, line and column."""

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from embedexp.errors import ConfigError, DataError
from embedexp.eval.mteb_eval import prepare_environment

prepare_environment(Path(tempfile.gettempdir()) / "embedexp-test")  # before mteb is imported: no ~/.cache/mteb

pytest.importorskip("mteb.evaluate")

TASK = "AskUbuntuDupQuestions"  # an mteb Reranking task (main score MAP@1000)
WORDS = "usb drive mount kernel wifi driver printer sound grub boot java python update disk screen mouse".split()


def _rows() -> list[dict]:
    rows = []
    for q in range(6):
        w = WORDS[q::3]
        rows.append(
            {
                "query": f"how to fix {w[0]} {w[1]} {q}",
                "positive": [f"{w[0]} {w[1]} fixed {q}", f"{w[1]} problem solved {q}"][: 1 + q % 2],
                "negative": [f"{WORDS[(q + k) % len(WORDS)]} question {q}-{k}" for k in range(3 + q % 3)],
            }
        )
    rows.insert(3, {"query": "no negatives here", "positive": ["a positive"], "negative": []})  # mteb drops it
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rerank")
    path = tmp / "rerank.jsonl"
    rows = _rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp, path, rows


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    """(our Encoder, the same weights as a sentence-transformers folder loaded by sentence-transformers)."""
    from sentence_transformers import SentenceTransformer

    from embedexp.models import Encoder

    encoder = Encoder(str(tiny_model_dir))
    st_dir = encoder.save(tmp_path_factory.mktemp("st") / "tiny-st")
    return encoder, SentenceTransformer(str(st_dir), device="cpu")


def _ours(encoder, path: Path, cache: Path):
    from embedexp.eval.mteb_eval import MtebEvaluation

    ev = MtebEvaluation(
        tasks=[TASK], local_data={TASK: {"type": "reranking", "path": str(path), "split": "test"}}, metrics=None
    )
    assert ev.tasks[0].task.metadata.type == "Reranking"
    return ev, ev.run(encoder)


def _mteb_reference(st_model, rows: list[dict]) -> dict:
    """mteb's own path for this layout: AbsTaskReranking's conversion (the task named in
    OLD_FORMAT_RERANKING_TASKS, as mteb documents) and mteb.evaluate on a SentenceTransformer."""
    import mteb
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.text import reranking

    metadata = mteb.get_task(TASK).metadata

    class Reference(reranking.AbsTaskReranking):
        pass

    Reference.metadata = metadata
    task = Reference()
    reranking.OLD_FORMAT_RERANKING_TASKS.append(TASK)
    try:
        task.transform_old_dataset_format(DatasetDict({"test": Dataset.from_list(rows)}))
    finally:
        reranking.OLD_FORMAT_RERANKING_TASKS.remove(TASK)
    result = mteb.evaluate(st_model, [task], cache=None, co2_tracker=False, raise_error=True)
    return result.task_results[0].scores["test"][0]


def _by_hand(st_model, rows: list[dict]) -> tuple[list[float], list[float]]:
    """Per-query average precision (sklearn) and reciprocal rank@10 of cosine-ranked candidates."""
    from sklearn.metrics import average_precision_score

    aps, rrs = [], []
    for r in rows:
        if not r["positive"] or not r["negative"]:
            continue
        q = st_model.encode([r["query"]], normalize_embeddings=True)
        d = st_model.encode(r["positive"] + r["negative"], normalize_embeddings=True)
        sims = (d @ q.T)[:, 0]
        gold = np.array([1] * len(r["positive"]) + [0] * len(r["negative"]))
        aps.append(float(average_precision_score(gold, sims)))
        first = int(np.flatnonzero(gold[np.argsort(-sims)])[0])
        rrs.append(1.0 / (first + 1) if first < 10 else 0.0)
    return aps, rrs


def test_local_reranking_gives_mtebs_own_and_hand_computed_scores(models, data, tmp_path, monkeypatch):
    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb"))
    encoder, st_model = models
    _, path, rows = data
    ev, scores = _ours(encoder, path, tmp_path)
    ref = _mteb_reference(st_model, rows)
    prefix = f"mteb/{TASK}"
    for metric in ("main_score", "map_at_1000", "mrr_at_10", "ndcg_at_10", "recall_at_3"):
        assert scores[f"{prefix}/{metric}"] == pytest.approx(ref[metric], abs=1e-6), metric
    aps, rrs = _by_hand(st_model, rows)
    assert len(aps) == 6  # the row without negatives is dropped, as mteb does
    assert scores[f"{prefix}/main_score"] == pytest.approx(np.mean(aps), abs=5e-6)  # mteb rounds to 5 decimals
    assert scores[f"{prefix}/mrr_at_10"] == pytest.approx(np.mean(rrs), abs=5e-6)
    assert 0.0 < scores[f"{prefix}/main_score"] < 1.0  # neither trivially perfect nor empty
    # per-query values for the paired statistics: one per kept query, their mean is the main score
    unit = ev.last_units[f"{prefix}/main_score"]
    assert unit["ids"] == [f"test_query{i}" for i in range(6)]
    assert unit["values"] == pytest.approx(aps, abs=1e-6)


@pytest.mark.parametrize(
    "line, where",
    [
        ("{not json", r"line 2: not valid JSON"),
        (json.dumps({"query": "q", "positive": ["p"]}), r'line 2: column "negative" is missing'),
        (json.dumps({"query": "q", "positive": "p", "negative": ["n"]}), r'line 2: column "positive" must be a list'),
        (
            json.dumps({"query": "", "positive": ["p"], "negative": ["n"]}),
            r'line 2: column "query" must be a non-empty',
        ),
        (json.dumps(["q", ["p"], ["n"]]), r"line 2: expected a JSON object"),
    ],
)
def test_bad_reranking_file_is_one_line_naming_file_line_and_column(tmp_path, line, where):
    from embedexp.eval.mteb_eval import MtebEvaluation

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"query": "fine", "positive": ["p"], "negative": ["n"]}) + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        MtebEvaluation(tasks=[TASK], local_data={TASK: {"type": "reranking", "path": str(path)}})
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path))
    assert re.search(where, message), message


def test_reranking_specs_are_checked_in_one_line(tmp_path):
    from embedexp.eval.mteb_eval import MtebEvaluation

    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"query": "q", "positive": [], "negative": ["n"]}) + "\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no row with at least one positive and one negative"):
        MtebEvaluation(tasks=[TASK], local_data={TASK: {"type": "reranking", "path": str(empty)}})
    with pytest.raises(ConfigError, match=rf"local_data.{TASK}.type='sts'; .* expected type 'reranking'"):
        MtebEvaluation(tasks=[TASK], local_data={TASK: {"type": "sts", "path": str(empty)}})
    with pytest.raises(ConfigError, match=r"local_data.STSBenchmark.type='reranking'; .* expected type 'sts'"):
        MtebEvaluation(tasks=["STSBenchmark"], local_data={"STSBenchmark": {"type": "reranking", "path": str(empty)}})
