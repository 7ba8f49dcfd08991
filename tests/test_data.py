"""Training-set builders and the random miner."""

import json

import pytest

from conftest import DEMO, write_beir
from embedexp.data.readers import load_qrels
from embedexp.data.train_sets import build_train_set
from embedexp.errors import ConfigError, DataError
from embedexp.miners import RandomNegativeMiner


def test_beir_pairs_are_query_and_title_plus_text():
    ts = build_train_set({"format": "beir", "root": str(DEMO), "split": "train"})
    qrels = load_qrels(DEMO, "train")
    assert len(ts) == sum(1 for docs in qrels.values() for g in docs.values() if g > 0)
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (DEMO / "corpus.jsonl").read_text().splitlines()}
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (DEMO / "queries.jsonl").read_text().splitlines()}
    qid = ts.query_ids[0]
    did = next(d for d in qrels[qid])
    assert ts.rows[0] == (queries[qid], (corpus[did]["title"] + " " + corpus[did]["text"]).strip())
    assert ts.columns == ("anchor", "positive") and ts.kinds == ("query", "document")


def test_sts_graded_and_binary_labels():
    graded = build_train_set({"format": "sts", "path": str(DEMO / "sts.tsv")})
    binary = build_train_set({"format": "sts", "path": str(DEMO / "sts.tsv"), "binary_threshold": 4.0})
    scores = [float(line.split("\t")[0]) for line in (DEMO / "sts.tsv").read_text().splitlines()[1:] if line.strip()]
    assert graded.labels == pytest.approx([s / 5 for s in scores])
    assert binary.labels == [1.0 if s >= 4.0 else 0.0 for s in scores]


def test_labeled_pairs_and_bad_label(tmp_path):
    p = tmp_path / "lp.jsonl"
    p.write_text('{"text_a": "a cat", "text_b": "a dog", "label": 1}\n{"text_a": "x", "text_b": "y", "label": 0}\n')
    ts = build_train_set({"format": "labeled_pairs", "path": str(p)})
    assert ts.rows == [("a cat", "a dog"), ("x", "y")] and ts.labels == [1.0, 0.0]
    p.write_text('{"text_a": "a cat", "text_b": "a dog", "label": "yes"}\n')
    with pytest.raises(DataError, match="line 1"):
        build_train_set({"format": "labeled_pairs", "path": str(p)})


def test_sentences_rows_are_damaged_original_and_deterministic(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("\n".join(f"sentence number {i} has quite a few words in it" for i in range(20)))
    a = build_train_set({"format": "sentences", "path": str(p), "unit": "document", "deletion_ratio": 0.6}, seed=1)
    b = build_train_set({"format": "sentences", "path": str(p), "unit": "document", "deletion_ratio": 0.6}, seed=1)
    assert a.columns == ("damaged", "original")
    for i in range(len(a)):
        damaged, original = a.get(i)
        assert original == a.rows[i][0]
        assert set(damaged.split()) <= set(original.split()) and len(damaged.split()) < len(original.split())
        assert a.get(i) == b.get(i)


def test_sentence_split_of_corpus(tmp_path):
    root = write_beir(tmp_path / "b", {"d1": ("T", "First sentence is here. Second one follows here! Third?")}, {"q": "x"}, {"q": {"d1": 1}})
    ts = build_train_set({"format": "sentences", "root": str(root), "unit": "sentence", "min_words": 1})
    assert [r[0] for r in ts.rows] == ["T First sentence is here.", "Second one follows here!", "Third?"]


def test_unknown_format_and_missing_key():
    with pytest.raises(ConfigError, match="data.train.format='csv'"):
        build_train_set({"format": "csv"})
    with pytest.raises(ConfigError, match="data.train.path is required"):
        build_train_set({"format": "pairs"})


def test_random_miner_never_picks_a_known_positive():
    ts = build_train_set({"format": "beir", "root": str(DEMO), "split": "train"})
    mined = RandomNegativeMiner(n_negatives=3, seed=0).mine(ts)
    assert mined.columns == ("anchor", "positive", "negative_1", "negative_2", "negative_3")
    text_to_ids = {}
    for did, text in ts.corpus.items():
        text_to_ids.setdefault(text, set()).add(did)
    for qid, row in zip(mined.query_ids, mined.rows):
        positives = {d for d, g in ts.qrels[qid].items() if g > 0}
        negs = row[2:]
        assert len(set(negs)) == 3
        for text in negs:
            assert not (text_to_ids[text] & positives)
    again = RandomNegativeMiner(n_negatives=3, seed=0).mine(ts)
    assert again.rows == mined.rows


def test_random_miner_needs_retrieval_data():
    ts = build_train_set({"format": "sts", "path": str(DEMO / "sts.tsv")})
    with pytest.raises(ConfigError, match="needs retrieval data"):
        RandomNegativeMiner().mine(ts)
