"""The `helpdesk` demo set (embedexp/data/helpdesk): integrity, train/test separation, regeneration, preset.

Fast: reads the shipped files and composes the preset; no model is trained or loaded.
"""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from embedexp.config import config_dir, container, register_resolvers

ROOT = Path(__file__).resolve().parents[1] / "embedexp" / "data" / "helpdesk"


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / name).read_text(encoding="utf-8").splitlines()]


def _qrels(split: str) -> list[tuple[str, str, int]]:
    with open(ROOT / "qrels" / f"{split}.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["query-id", "corpus-id", "score"]
    return [(q, d, int(s)) for q, d, s in rows[1:]]


@pytest.fixture(scope="module")
def shipped():
    return {
        "corpus": _jsonl("corpus.jsonl"),
        "queries": _jsonl("queries.jsonl"),
        "train": _qrels("train"),
        "test": _qrels("test"),
    }


def test_ids_unique_and_texts_present(shipped):
    doc_ids = [d["_id"] for d in shipped["corpus"]]
    qids = [q["_id"] for q in shipped["queries"]]
    assert len(doc_ids) == len(set(doc_ids)) >= 200
    assert len(qids) == len(set(qids))
    assert all(d["title"].strip() and d["text"].strip() for d in shipped["corpus"])
    assert all(q["text"].strip() for q in shipped["queries"])
    texts = [q["text"] for q in shipped["queries"]]
    assert len(texts) == len(set(texts)), "a query text appears twice"


def test_qrels_reference_existing_ids(shipped):
    doc_ids = {d["_id"] for d in shipped["corpus"]}
    qids = {q["_id"] for q in shipped["queries"]}
    for split in ("train", "test"):
        for q, d, score in shipped[split]:
            assert q in qids and d in doc_ids and score >= 1, (split, q, d, score)
    # every query is judged in exactly one split
    judged = {q for q, _, _ in shipped["train"]} | {q for q, _, _ in shipped["test"]}
    assert judged == qids


def test_train_and_test_are_disjoint(shipped):
    text = {q["_id"]: q["text"].lower() for q in shipped["queries"]}
    train_q = {q for q, _, _ in shipped["train"]}
    test_q = {q for q, _, _ in shipped["test"]}
    assert not train_q & test_q
    assert not {text[q] for q in train_q} & {text[q] for q in test_q}
    # test queries target articles that no train query targets
    assert not {d for _, d, _ in shipped["train"]} & {d for _, d, _ in shipped["test"]}
    assert 80 <= len(test_q) <= 150
    assert 300 <= len(shipped["train"]) <= 600
    assert all(any(q == t for t, _, s in shipped["test"] if s > 0) for q in test_q)  # a relevant doc each


def test_phrasings_are_split_between_train_and_test():
    build = _build_module()
    data = build.build()
    systems = {code: descs for code, descs, *_ in build.SYSTEMS}
    text = {q["_id"]: q["text"] for q in data["queries"]}

    def phrasing(qid: str, doc: str) -> str:
        # undo the {D} slot: the query with its system description replaced by a marker
        code, _ = data["topic"][doc]
        t = text[qid].lower()
        for desc in sorted(systems[code], key=len, reverse=True):
            if desc.lower() in t:
                return t.replace(desc.lower(), "{D}", 1)
        raise AssertionError(f"{qid}: no description of {code} in {text[qid]!r}")

    train = {phrasing(q, d) for q, d in data["train"]}
    test = {phrasing(q, d) for q, d in data["test"]}
    assert not train & test
    # and no test query names a codename (the model must map plain words to the company's names)
    codes = [c.lower() for c in systems]
    assert not any(c in text[q].lower() for q, _ in data["test"] for c in codes)


def _build_module():
    spec = importlib.util.spec_from_file_location("helpdesk_build", ROOT / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_regenerates_the_shipped_files(shipped, tmp_path):
    build = _build_module()
    build.write(build.build(), tmp_path)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), name


def test_preset_composes_and_loads(isolated_cache):
    register_resolvers()
    with initialize_config_dir(config_dir=str(Path(config_dir())), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=helpdesk", "paths.output_dir=/tmp/embedexp-test-out"])
    assert Path(cfg.data.train.root) == ROOT
    from embedexp.data.config import check_data_config
    from embedexp.eval.sets import load_eval_sets

    data = container(cfg.data)
    check_data_config("data", data)
    dm = instantiate(cfg.data)
    train = dm.load()
    assert len(train) == len(_qrels("train"))
    sets = {s.name: s for s in load_eval_sets(data["eval_sets"])}
    assert len(sets["helpdesk_test"].query_ids) == len(_qrels("test"))
    assert len(sets["helpdesk_test"].doc_ids) == len(_jsonl("corpus.jsonl"))
    assert len(sets["demo_sts"].scores) > 50


def test_control_set_keeps_the_problem_and_changes_the_system():
    build = _build_module()
    data = build.build()
    ctrl = build.control(data)
    assert ctrl["test"] == data["test"] and ctrl["corpus"] == data["corpus"]
    assert len(ctrl["train"]) > 0.8 * len(data["train"])
    before = dict(data["train"])
    for qid, doc in ctrl["train"]:
        (code_a, prob_a), (code_b, prob_b) = data["topic"][before[qid]], data["topic"][doc]
        assert prob_a == prob_b and code_a != code_b
