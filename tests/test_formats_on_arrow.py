"""Issue 17 item 1: the line-oriented formats (beir, pairs, labeled_pairs, sts, sentences) on the Arrow layer.

The reference oracle is the pre-Arrow code (list-building readers, as embedexp had them before this change),
kept below as `_old_*`: every format's Arrow-backed rows (and labels, ids, TSDAE noise) must equal its rows.
"""

import json
import logging
import random

import numpy as np
import pyarrow as pa
import pytest

from embedexp.data import line_rows, readers
from embedexp.data.no_duplicates import row_hashes, text_hash
from embedexp.data.readers import _fail, _finish, _jsonl, _lines, doc_text
from embedexp.data.train_sets import DeleteNoise, build_train_set
from embedexp.errors import DataError

from conftest import write_beir

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


# ---------------------------------------------------------------- the old list readers (reference oracle)
def _old_beir(root, split="train", min_grade=1):
    corpus = readers.load_corpus(root)
    queries = readers.load_queries(root)
    qrels = readers.load_qrels(root, split, queries, corpus)
    texts = {did: doc_text(d) for did, d in corpus.items()}
    rows, qids = [], []
    for qid, docs in qrels.items():
        for did, grade in docs.items():
            if grade >= min_grade:
                rows.append((queries[qid], texts[did]))
                qids.append(qid)
    return rows, qids, texts, qrels


def _old_pairs(path, on_error="raise"):
    rows, n_neg = [], None
    for lineno, obj in _jsonl(path, on_error):
        anchor = obj.get("anchor", obj.get("query"))
        positive = obj.get("positive")
        negs = obj.get("negatives", [obj["negative"]] if "negative" in obj else [])
        texts = [anchor, positive, *negs] if isinstance(negs, list) else None
        if texts is None or not all(isinstance(t, str) and t.strip() for t in texts):
            _fail(on_error, path, f"line {lineno}: bad")
            continue
        if n_neg is None:
            n_neg = len(negs)
        elif len(negs) != n_neg:
            _fail(on_error, path, f"line {lineno}: negatives")
            continue
        rows.append(tuple(texts))
    _finish(path, len(rows), "pairs")
    return rows


def _old_labeled(path):
    rows, labels = [], []
    for _, obj in _jsonl(path, "raise"):
        rows.append((obj["text_a"], obj["text_b"]))
        labels.append(float(obj["label"]))
    return rows, labels


def _old_sts(path, max_score=5.0, binary_threshold=None):
    data = []
    header = None
    for _, line in _lines(path, "raise"):
        cols = line.split("\t")
        if header is None:
            header = [cols.index(c) for c in ("score", "sentence1", "sentence2")]
            continue
        data.append((cols[header[1]], cols[header[2]], float(cols[header[0]])))
    if binary_threshold is None:
        labels = [s / max_score for _, _, s in data]
    else:
        labels = [1.0 if s >= binary_threshold else 0.0 for _, _, s in data]
    return [(a, b) for a, b, _ in data], labels


def _old_sentences(texts, unit, min_words, max_rows, seed):
    from embedexp.data.train_sets import _SENTENCE_END

    if unit == "sentence":
        texts = [s.strip() for t in texts for s in _SENTENCE_END.split(t)]
    rows = [(t,) for t in texts if len(t.split()) >= min_words]
    if max_rows:
        rows = random.Random(seed).sample(rows, min(max_rows, len(rows)))
    return rows


# ---------------------------------------------------------------- tiny random data written by the test
def _text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _write_all(tmp_path, seed=0):
    rng = random.Random(seed)
    corpus = {
        f"d{i}": (rng.choice(["", "Title " + _text(rng, 2)]), _text(rng, 12) + ". Next one " + _text(rng, 5) + "!")
        for i in range(30)
    }
    queries = {f"q{i}": _text(rng, 5) for i in range(12)}
    qrels = {f"q{i}": {f"d{j}": rng.choice([0, 1, 2]) for j in rng.sample(range(30), 3)} for i in range(12)}
    root = write_beir(tmp_path / "beir", corpus, queries, qrels, split="train")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {"anchor": _text(rng, 4), "positive": _text(rng, 9), "negatives": [_text(rng, 8), _text(rng, 7)]}
            )
            + "\n"
            for _ in range(40)
        )
    )
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text(
        "".join(
            json.dumps({"text_a": _text(rng, 5), "text_b": _text(rng, 6), "label": rng.choice([0, 1, 0.25])}) + "\n"
            for _ in range(25)
        )
    )
    sts = tmp_path / "sts.tsv"
    sts.write_text(
        "genre\tscore\tsentence1\tsentence2\n"
        + "".join(f"news\t{rng.uniform(0, 5):.3f}\t{_text(rng, 6)}\t{_text(rng, 7)}\n" for _ in range(25))
    )
    txt = tmp_path / "sentences.txt"
    txt.write_text("".join(f"{_text(rng, rng.randint(2, 9))}. {_text(rng, 6)}\n\n" for _ in range(30)))
    return {"beir": root, "pairs": pairs, "labeled_pairs": labeled, "sts": sts, "sentences": txt}


def _spec(files, fmt, cache):
    if fmt == "beir":
        return {"format": "beir", "root": str(files["beir"]), "split": "train", "cache_dir": str(cache)}
    if fmt == "sentences":
        return {"format": "sentences", "path": str(files["sentences"]), "unit": "sentence", "cache_dir": str(cache)}
    return {"format": fmt, "path": str(files[fmt]), "cache_dir": str(cache)}


def _old_rows(files, fmt):
    if fmt == "beir":
        return _old_beir(files["beir"])[0], None
    if fmt == "pairs":
        return _old_pairs(files["pairs"]), None
    if fmt == "labeled_pairs":
        return _old_labeled(files["labeled_pairs"])
    if fmt == "sts":
        return _old_sts(files["sts"])
    texts = [line.strip() for line in files["sentences"].read_text().splitlines() if line.strip()]
    return _old_sentences(texts, "sentence", 4, None, 0), None


@pytest.mark.parametrize("fmt", ["beir", "pairs", "labeled_pairs", "sts", "sentences"])
def test_every_line_format_is_arrow_backed_and_equals_the_old_reader(tmp_path, fmt):
    files = _write_all(tmp_path)
    cache = tmp_path / "hf"
    ts = build_train_set(_spec(files, fmt, cache), seed=3)
    assert not isinstance(ts.rows, list)
    table = ts.rows.table
    assert isinstance(table, pa.Table)
    written = sorted((cache / line_rows.FOLDER).glob(f"{fmt}-*.arrow"))
    assert len(written) == 1
    with pa.memory_map(str(written[0])) as mm:
        assert pa.ipc.open_stream(mm).read_all().equals(table)  # the rows are that cached Arrow file's
    old_rows, old_labels = _old_rows(files, fmt)
    assert len(old_rows) > 5
    assert list(ts.rows) == old_rows and ts.rows == old_rows
    assert [ts.rows[i] for i in range(len(ts))] == old_rows
    if old_labels is None:
        assert ts.labels is None
    else:
        assert "label" in table.column_names and pa.types.is_float64(table.schema.field("label").type)
        assert not isinstance(ts.labels, list)
        assert ts.labels == old_labels and [type(x) for x in ts.labels] == [float] * len(old_labels)
    if fmt == "sentences":
        noise = DeleteNoise(0.6, 3)
        assert [ts.get(i) for i in range(len(ts))] == [noise(i, row) for i, row in enumerate(old_rows)]
    if fmt == "beir":
        _, qids, texts, qrels = _old_beir(files["beir"])
        assert ts.query_ids == qids and ts.corpus == texts and ts.qrels == qrels


def test_rows_are_memory_mapped_not_copied_into_arrow_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    rng = random.Random(1)
    path.write_text(
        "".join(json.dumps({"anchor": _text(rng, 20), "positive": _text(rng, 120)}) + "\n" for _ in range(1000))
    )
    ts = build_train_set({"format": "pairs", "path": str(path), "cache_dir": str(tmp_path / "hf")})
    before = pa.total_allocated_bytes()
    again = build_train_set({"format": "pairs", "path": str(path), "cache_dir": str(tmp_path / "hf")})
    assert ts.rows.table.nbytes > 500_000
    assert pa.total_allocated_bytes() - before < ts.rows.table.nbytes / 10  # mapped pages, not pool buffers
    assert again.rows == ts.rows and again.fingerprint() == ts.fingerprint()


def test_writes_in_chunks_and_a_small_chunk_gives_the_same_rows(tmp_path, monkeypatch):
    files = _write_all(tmp_path)
    monkeypatch.setattr(line_rows, "CHUNK", 7)
    ts = build_train_set(_spec(files, "pairs", tmp_path / "hf"))
    assert ts.rows.table.column("anchor").num_chunks == 6  # 40 rows, 7 per record batch
    assert ts.rows == _old_pairs(files["pairs"])


def test_same_content_is_read_from_the_cache_and_new_content_is_not(tmp_path, monkeypatch):
    files = _write_all(tmp_path)
    spec = _spec(files, "pairs", tmp_path / "hf")
    first = build_train_set(spec)

    def no_read(*a, **k):
        raise AssertionError("the source was parsed again")

    monkeypatch.setattr("embedexp.data.train_sets.iter_pairs", no_read)
    again = build_train_set(spec)
    assert again.rows == first.rows and again.fingerprint() == first.fingerprint()
    monkeypatch.undo()
    lines = files["pairs"].read_text().splitlines()
    lines[0] = json.dumps({"anchor": "changed", "positive": "p", "negatives": ["n1", "n2"]})
    files["pairs"].write_text("\n".join(lines) + "\n")
    changed = build_train_set(spec)
    assert changed.rows[0] == ("changed", "p", "n1", "n2") and changed.fingerprint() != first.fingerprint()


def test_a_bad_line_names_file_and_line_and_leaves_no_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": ""}\n')
    cache = tmp_path / "hf"
    with pytest.raises(DataError, match=r"^.*pairs\.jsonl: line 2: expected non-empty strings 'anchor'"):
        build_train_set({"format": "pairs", "path": str(path), "cache_dir": str(cache)})
    assert not [p for p in (cache / line_rows.FOLDER).iterdir()]  # no rows file, no temp file


def test_skipped_rows_are_counted_again_when_read_from_the_cache(tmp_path, caplog):
    path = tmp_path / "sts.tsv"
    path.write_text("score\tsentence1\tsentence2\n4.0\ta cat\ta kitten\nnope\tx\ty\n2.5\tb\tc\n")
    spec = {"format": "sts", "path": str(path), "cache_dir": str(tmp_path / "hf"), "on_error": "skip"}
    for _ in range(2):
        before = readers.SKIPPED[str(path)]
        with caplog.at_level(logging.WARNING, logger="embedexp.data"):
            caplog.clear()
            ts = build_train_set(spec)
        assert readers.SKIPPED[str(path)] - before == 1
        assert "skipped 1 bad row in" in caplog.text and "line 3: score 'nope' is not a number" in caplog.text
        assert ts.rows == [("a cat", "a kitten"), ("b", "c")] and ts.labels == [0.8, 0.5]


def test_sentences_max_rows_sample_equals_the_old_sample(tmp_path):
    files = _write_all(tmp_path)
    spec = {**_spec(files, "sentences", tmp_path / "hf"), "unit": "document", "min_words": 3, "max_rows": 9}
    ts = build_train_set(spec, seed=11)
    texts = [line.strip() for line in files["sentences"].read_text().splitlines() if line.strip()]
    assert ts.rows == _old_sentences(texts, "document", 3, 9, 11) and len(ts) == 9


def test_no_duplicates_hashes_of_line_formats_come_from_arrow_and_equal_text_hash(tmp_path):
    files = _write_all(tmp_path)
    for fmt in ("pairs", "beir"):
        ts = build_train_set(_spec(files, fmt, tmp_path / "hf"))
        expect = np.array([[text_hash(t) for t in row] for row in _old_rows(files, fmt)[0]], dtype=np.int64)
        assert hasattr(ts.rows, "row_hashes")
        assert np.array_equal(row_hashes(ts), expect)
