"""Training-set builders and the random miner."""

import json

import pytest

from embedexp.data.readers import load_qrels
from embedexp.data.train_sets import build_train_set
from embedexp.errors import ConfigError, DataError
from embedexp.miners import RandomNegativeMiner

from conftest import DEMO, write_beir


def test_beir_pairs_are_query_and_title_plus_text():
    ts = build_train_set({"format": "beir", "root": str(DEMO), "split": "train"})
    qrels = load_qrels(DEMO, "train")
    assert len(ts) == sum(1 for docs in qrels.values() for g in docs.values() if g > 0)
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (DEMO / "corpus.jsonl").read_text().splitlines()}
    queries = {
        json.loads(line)["_id"]: json.loads(line)["text"] for line in (DEMO / "queries.jsonl").read_text().splitlines()
    }
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
    root = write_beir(
        tmp_path / "b",
        {"d1": ("T", "First sentence is here. Second one follows here! Third?")},
        {"q": "x"},
        {"q": {"d1": 1}},
    )
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


# --------------------------------------------------------------------------- issue 14, item 10: lone surrogates
# Reference: the Hugging Face fast tokenizer itself, which raises TypeError on a str holding a lone surrogate
# (e.g. "\ud800", written in JSON as the valid escape "\\ud800"); every reader must stop such text at the row.

LONE = "\\ud800"  # as it appears inside a JSON string on disk (pure ASCII, valid UTF-8, valid JSON)


def _tokenizer_rejects_lone_surrogates(tiny_model_dir):
    from embedexp.models import Encoder

    enc = Encoder(str(tiny_model_dir))
    with pytest.raises(TypeError):
        enc.encode(["fine", "bad \ud800 text"], "document", 4, False)
    return enc


def _jsonl_cases(tmp_path):
    """(reader call, file, bad line) for every jsonl reader; the bad row holds a lone surrogate in one field."""
    from embedexp.data.readers import load_corpus, load_pairs, load_queries
    from embedexp.data.train_sets import build_train_set

    good_docs = ['{"_id": "d1", "title": "T", "text": "cats purr"}', '{"_id": "d2", "title": "", "text": "dogs bark"}']
    cases = []
    for field, row in (
        ("text", f'{{"_id": "d3", "title": "", "text": "bad {LONE} text"}}'),
        ("title", f'{{"_id": "d3", "title": "bad {LONE}", "text": "ok text"}}'),
    ):
        root = tmp_path / f"corpus_{field}"
        write_beir(root, {"x": ("", "y")}, {"q1": "what purrs"}, {"q1": {"x": 1}})
        (root / "corpus.jsonl").write_text("\n".join([good_docs[0], row, good_docs[1]]) + "\n")
        cases.append(
            (
                f"corpus {field}",
                lambda on_error, r=root: [
                    t for d in load_corpus(r, on_error).values() for t in (d["title"], d["text"])
                ],
                root / "corpus.jsonl",
                2,
            )
        )
    root = tmp_path / "queries"
    write_beir(root, {"x": ("", "y")}, {"q1": "a"}, {"q1": {"x": 1}})
    (root / "queries.jsonl").write_text(f'{{"_id": "q1", "text": "what purrs"}}\n{{"_id": "q2", "text": "{LONE}"}}\n')
    cases.append(
        ("queries", lambda on_error, r=root: list(load_queries(r, on_error).values()), root / "queries.jsonl", 2)
    )
    for field, row in (
        ("anchor", f'{{"anchor": "a {LONE}", "positive": "p", "negatives": ["n"]}}'),
        ("positive", f'{{"query": "a", "positive": "{LONE}p", "negatives": ["n"]}}'),
        ("negatives", f'{{"anchor": "a", "positive": "p", "negatives": ["n{LONE}"]}}'),
    ):
        p = tmp_path / f"pairs_{field}.jsonl"
        p.write_text('{"anchor": "a cat", "positive": "a kitten", "negatives": ["a car"]}\n' + row + "\n")
        cases.append((f"pairs {field}", lambda on_error, p=p: [t for r in load_pairs(p, on_error) for t in r], p, 2))
    p = tmp_path / "labeled.jsonl"
    p.write_text(f'{{"text_a": "a", "text_b": "b", "label": 1}}\n{{"text_a": "{LONE}", "text_b": "b", "label": 0}}\n')
    cases.append(
        (
            "labeled pairs",
            lambda on_error, p=p: [
                t
                for r in build_train_set({"format": "labeled_pairs", "path": str(p), "on_error": on_error}).rows
                for t in r
            ],
            p,
            2,
        )
    )
    return cases


def test_lone_surrogate_in_any_jsonl_reader_is_a_data_error_naming_file_and_line(tmp_path):
    for name, read, path, line in _jsonl_cases(tmp_path):
        with pytest.raises(DataError) as err:
            read("raise")
        msg = str(err.value)
        assert msg.startswith(f"{path}: line {line}: ") and "surrogate" in msg and "\n" not in msg, (name, msg)


def test_lone_surrogate_rows_are_skipped_and_counted_and_the_rest_tokenizes(tmp_path, tiny_model_dir):
    from embedexp.data import readers

    enc = _tokenizer_rejects_lone_surrogates(tiny_model_dir)
    for name, read, path, line in _jsonl_cases(tmp_path):
        before = readers.SKIPPED[str(path)]
        texts = read("skip")
        assert readers.SKIPPED[str(path)] - before == 1, name
        assert texts and all("\ud800" not in t for t in texts), name
        enc.encode([t for t in texts if t], "document", 4, False)  # what reaches the tokenizer is accepted


def test_surrogate_bytes_in_tsv_and_text_files_are_bad_rows(tmp_path):
    """STS tsv and sentence files: a surrogate can only arrive as its 3 bytes (ED A0 80), which are not
    UTF-8 (RFC 3629, section 3); they are a bad row under raise and a counted skip under skip."""
    from embedexp.data import readers
    from embedexp.data.readers import load_sts

    sts = tmp_path / "sts.tsv"
    sts.write_bytes(b"score\tsentence1\tsentence2\n4.0\ta cat\ta kitten\n1.0\tbad \xed\xa0\x80\tx\n")
    with pytest.raises(DataError, match=r"sts\.tsv: line 3: not UTF-8"):
        load_sts(sts)
    assert load_sts(sts, on_error="skip") == [("a cat", "a kitten", 4.0)]
    txt = tmp_path / "s.txt"
    txt.write_bytes(b"one sentence with enough words here\nbad \xed\xa0\x80 words in this line\n")
    with pytest.raises(DataError, match=r"s\.txt: line 2: not UTF-8"):
        build_train_set({"format": "sentences", "path": str(txt), "unit": "document"})
    before = readers.SKIPPED[str(txt)]
    ts = build_train_set({"format": "sentences", "path": str(txt), "unit": "document", "on_error": "skip"})
    assert [r[0] for r in ts.rows] == ["one sentence with enough words here"]
    assert readers.SKIPPED[str(txt)] - before == 1


def test_sentences_from_a_beir_corpus_skip_lone_surrogates(tmp_path):
    root = write_beir(
        tmp_path / "b", {"d1": ("T", "First sentence is here. Second one follows here!")}, {"q": "x"}, {"q": {"d1": 1}}
    )
    with open(root / "corpus.jsonl", "a") as f:
        f.write(f'{{"_id": "d2", "title": "", "text": "Broken {LONE} sentence here."}}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl: line 2: .*surrogate"):
        build_train_set({"format": "sentences", "root": str(root), "unit": "sentence", "min_words": 1})
    ts = build_train_set(
        {"format": "sentences", "root": str(root), "unit": "sentence", "min_words": 1, "on_error": "skip"}
    )
    assert [r[0] for r in ts.rows] == ["T First sentence is here.", "Second one follows here!"]
