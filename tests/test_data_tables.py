"""Issue 17: data the way users have it (tables read with `datasets`, column mapping, conventions, draws).

Every file is tiny and written by the test; the expected rows are worked out by hand from what was written.
"""

import json

import pytest

from embedexp.data.train_sets import build_train_set
from embedexp.errors import ConfigError, DataError

QA = [("what is a cat", "a small feline"), ("what is a dog", "a loyal canine"), ("where is paris", "in france")]


def _csv(path, header, rows, sep=","):
    path.write_text(sep.join(header) + "\n" + "".join(sep.join(r) + "\n" for r in rows))
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(tmp_path, path, **spec):
    return build_train_set({"format": "table", "path": str(path), "cache_dir": str(tmp_path / "hf"), **spec}, seed=3)


def _rows(ts):
    return [ts.get(i) for i in range(len(ts))]


# ---------------------------------------------------------------- files, folders, hub-name path
def test_csv_question_answer_is_anchor_positive_and_pairs_format_reads_it_as_a_table(tmp_path):
    p = _csv(tmp_path / "qa.csv", ["question", "answer"], QA)
    ts = _build(tmp_path, p)
    assert ts.columns == ("anchor", "positive") and ts.kinds == ("query", "document")
    assert _rows(ts) == QA and ts.rows == QA and ts.info["convention"] == "sentence-transformers"
    # the user's complaint: format=pairs with a csv said "not valid JSON"; now it is read as a table
    same = build_train_set({"format": "pairs", "path": str(p), "cache_dir": str(tmp_path / "hf")})
    assert _rows(same) == QA
    tsv = _csv(tmp_path / "qa.tsv", ["question", "answer"], QA, sep="\t")
    assert _rows(_build(tmp_path, tsv)) == QA


def test_parquet_arrow_save_to_disk_and_folder_of_files(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"query": [q for q, _ in QA], "answer": [a for _, a in QA]})
    pq.write_table(table, tmp_path / "qa.parquet")
    ds = datasets.Dataset.from_dict({"query": [q for q, _ in QA], "answer": [a for _, a in QA]})
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    folder = tmp_path / "folder"  # not save_to_disk: load_dataset(path), the code path a hub name takes
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"query": q, "answer": a} for q, a in QA])
    for path, n in ((tmp_path / "qa.parquet", 3), (tmp_path / "saved", 3), (folder, 3)):
        ts = _build(tmp_path, path)
        assert _rows(ts) == QA[:n], path
    assert _rows(_build(tmp_path, tmp_path / "saved", split="test")) == QA[:1]
    with pytest.raises(DataError, match=r"saved: no split 'dev' \(splits: train, test\)"):
        _build(tmp_path, tmp_path / "saved", split="dev")
    arrow = next((tmp_path / "saved" / "train").glob("*.arrow"))
    assert _rows(_build(tmp_path, arrow)) == QA  # an Arrow file is memory-mapped as it is


def test_hub_name_offline_is_one_line_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        _build(tmp_path, "nobody-here/no-such-dataset-xyz")
    msg = str(err.value)
    assert msg.startswith("nobody-here/no-such-dataset-xyz: cannot load as a hub dataset") and "\n" not in msg


# ---------------------------------------------------------------- column mapping and conventions
def test_explicit_mapping_with_scalar_and_list_negative_columns(tmp_path):
    p = _csv(
        tmp_path / "m.csv", ["id", "q", "a", "n1", "n2"], [("1", "q1", "a1", "x1", "y1"), ("2", "q2", "a2", "x2", "y2")]
    )
    ts = _build(tmp_path, p, columns={"anchor": "q", "positive": "a", "negatives": ["n1", "n2"]})
    assert ts.columns == ("anchor", "positive", "negative_1", "negative_2")
    assert _rows(ts) == [("q1", "a1", "x1", "y1"), ("q2", "a2", "x2", "y2")]
    j = _jsonl(tmp_path / "m.jsonl", [{"question": "q1", "answer": "a1", "hard_negs": ["x1", "y1"], "score": 0.5}])
    ts = _build(tmp_path, j, columns={"anchor": "question", "positive": "answer", "negatives": "hard_negs"})
    assert _rows(ts) == [("q1", "a1", "x1", "y1")]


def test_sentence_transformers_label_column_gives_labelled_pairs(tmp_path):
    p = _csv(
        tmp_path / "sts.csv",
        ["sentence1", "sentence2", "score"],
        [("a cat", "a kitten", "0.9"), ("a car", "a tree", "0.1")],
    )
    ts = _build(tmp_path, p)
    assert ts.columns == ("text_a", "text_b") and ts.kinds == ("document", "document")
    assert _rows(ts) == [("a cat", "a kitten"), ("a car", "a tree")] and list(ts.labels) == [0.9, 0.1]


def test_tevatron_passages_are_title_plus_text(tmp_path):
    row = {
        "query_id": "1",
        "query": "what purrs",
        "positive_passages": [{"docid": "d1", "title": "Cats", "text": "cats purr"}],
        "negative_passages": [
            {"docid": "d2", "title": "", "text": "dogs bark"},
            {"docid": "d3", "title": "Cars", "text": "vroom"},
        ],
    }
    ts = _build(tmp_path, _jsonl(tmp_path / "tev.jsonl", [row]))
    assert ts.info["convention"] == "tevatron" and ts.columns == ("anchor", "positive", "negative_1", "negative_2")
    assert ts.get(0) == ("what purrs", "Cats cats purr", "dogs bark", "Cars vroom")


def _flag_rows():
    """FlagEmbedding rows with 1..5 negatives; a negative text names its own teacher score (n<row>_<j> -> j/10)."""
    rows = []
    for r in range(6):
        n = 1 + r % 5
        rows.append(
            {
                "query": f"query {r}",
                "pos": [f"p{r}_0", f"p{r}_1"] if r % 2 else [f"p{r}_0"],
                "neg": [f"n{r}_{j}" for j in range(n)],
                "pos_scores": [0.9, 0.8] if r % 2 else [0.9],
                "neg_scores": [j / 10 for j in range(n)],
                "prompt": "Represent: ",
            }
        )
    return rows


def test_flagembedding_variable_negatives_are_drawn_seeded_per_epoch_and_resumable(tmp_path):
    p = _jsonl(tmp_path / "flag.jsonl", _flag_rows())
    ts = _build(tmp_path, p, negatives_per_row=3)
    assert ts.info["convention"] == "flagembedding" and ts.columns[2:] == ("negative_1", "negative_2", "negative_3")
    assert ts.has_scores
    draws = {}
    for epoch in range(4):
        ts.set_epoch(epoch)
        draws[epoch] = _rows(ts)
        for r, row in enumerate(draws[epoch]):
            assert row[0] == f"Represent: query {r}" and row[1] == f"p{r}_0"
            negs = row[2:]
            assert all(n.startswith(f"n{r}_") for n in negs)
            if 1 + r % 5 >= 3:
                assert len(set(negs)) == 3  # enough negatives: sampled without replacement
            scores = ts.scores(r)
            assert scores == (0.9, *(int(n.split("_")[1]) / 10 for n in negs))  # scores follow the drawn texts
    assert any(draws[0][r] != draws[1][r] for r in (3, 4))  # rows with more than k negatives re-draw
    again = _build(tmp_path, p, negatives_per_row=3)  # a resumed run: a fresh set at the same epoch
    again.set_epoch(2)
    assert _rows(again) == draws[2]
    ts.set_epoch(0)
    assert _rows(ts) == draws[0]


def test_positives_sample_all_and_short_negatives_fail(tmp_path):
    p = _jsonl(tmp_path / "flag.jsonl", _flag_rows())
    every = _build(tmp_path, p, positives="all", negatives_per_row=1)
    assert len(every) == 6 + 3 and sorted(r[1] for r in _rows(every)) == sorted(
        f"p{r}_{j}" for r in range(6) for j in range(2 if r % 2 else 1)
    )
    assert every.scores(2)[0] == 0.8  # row 1's second positive keeps its own teacher score
    sampled = _build(tmp_path, p, positives="sample", negatives_per_row=1)
    seen = set()
    for epoch in range(12):
        sampled.set_epoch(epoch)
        seen.add(sampled.get(1)[1])
    assert seen == {"p1_0", "p1_1"}
    with pytest.raises(
        DataError, match=r"flag\.jsonl: row 1 has 1 negatives in \['neg'\]; data.train.negatives_per_row=2"
    ):
        _build(tmp_path, p, negatives_per_row=2, short_negatives="fail")
    assert _build(tmp_path, p).columns[2:] == ("negative_1",)  # default k: the fewest negatives any row has


def test_fingerprint_is_stable_and_follows_data_and_draw_settings(tmp_path):
    p = _jsonl(tmp_path / "flag.jsonl", _flag_rows())
    a = _build(tmp_path, p, negatives_per_row=2).fingerprint()
    assert a == _build(tmp_path, p, negatives_per_row=2).fingerprint() and len(a) == 16
    assert a != _build(tmp_path, p, negatives_per_row=3).fingerprint()
    rows = _flag_rows()
    rows[0]["query"] = "changed"
    assert a != _build(tmp_path, _jsonl(tmp_path / "flag.jsonl", rows), negatives_per_row=2).fingerprint()


# ---------------------------------------------------------------- bad input: one line naming file, row, column
@pytest.mark.parametrize(
    "name, text, spec, expected",
    [
        (
            "qa.csv",
            "q,a\nx,y\n",
            {"columns": {"anchor": "question", "positive": "a"}},
            "qa.csv: no column 'question' (columns: q, a); set data.train.columns.anchor",
        ),
        (
            "num.csv",
            "question,answer\nwhat,1\nwho,2\n",
            {},
            "num.csv: row 1: column 'answer' holds int64 values (1); expected text",
        ),
        (
            "empty.csv",
            'question,answer\nwhat,yes\nwho,"  "\n',
            {},
            "empty.csv: row 2: column 'answer' is empty; expected non-empty text",
        ),
        (
            "flag.jsonl",
            '{"query": "q", "pos": ["p"], "neg": "not a list"}\n',
            {},
            "flag.jsonl: row 1: column 'neg' holds string values; expected a list of texts",
        ),
        (
            "flag2.jsonl",
            '{"query": "q", "pos": ["p"], "neg": ["a"]}\n{"query": "q", "pos": ["p"], "neg": ["a", ""]}\n',
            {},
            "flag2.jsonl: row 2: column 'neg' has an empty text",
        ),
        ("one.csv", "text\nhello\n", {}, "one.csv: cannot tell which columns are the texts (columns: text)"),
        ("data.xlsx", "whatever", {}, "data.xlsx: unknown file kind .xlsx; expected one of .csv"),
        ("bad.parquet", "question,answer\nnot,parquet\n", {}, "bad.parquet: cannot read as a parquet file"),
    ],
)
def test_bad_table_is_one_line_naming_file_row_column(tmp_path, name, text, spec, expected):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(DataError) as err:
        _build(tmp_path, p, **spec)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}/{expected}"), msg
    assert "\n" not in msg


def test_skip_keeps_good_rows_and_unknown_role_is_config_error(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("question,answer\nwhat,yes\nwho,\nwhere,there\n")
    ts = _build(tmp_path, p, on_error="skip")
    assert _rows(ts) == [("what", "yes"), ("where", "there")] and ts.info["skipped_rows"] == 1
    with pytest.raises(ConfigError, match=r"data.train.columns.query: unknown role"):
        _build(tmp_path, p, columns={"query": "question", "positive": "answer"})


# ---------------------------------------------------------------- dev split and miners on pairs data
def test_dev_split_keeps_table_rows_lazy(tmp_path):
    from embedexp.data.dev_split import split_by_query
    from embedexp.data.table_rows import TableRows

    rows = [(f"q{i}", f"a{i}") for i in range(10)]
    ts = _build(tmp_path, _csv(tmp_path / "qa.csv", ["question", "answer"], rows))
    train, dev = split_by_query(ts, 0.3, seed=0)
    assert isinstance(train.rows, TableRows) and len(train) == 7 and len(dev) == 3
    assert sorted(_rows(train) + dev) == sorted(rows)


def test_retrieval_view_of_pairs_is_sentence_transformers_corpus_and_qrels(tmp_path):
    from embedexp.data.retrieval_view import with_retrieval_ids

    rows = [
        {"query": "cats", "pos": ["c1", "c2"], "neg": ["d1"]},
        {"query": "dogs", "pos": ["d1"], "neg": ["c1", "x"]},
        {"query": "cats", "pos": ["c3"], "neg": ["x"]},
    ]
    view = with_retrieval_ids(_build(tmp_path, _jsonl(tmp_path / "f.jsonl", rows)))
    # hand-worked: distinct texts in first-seen order; anchors -> queries; every positive is relevant
    assert view.corpus == {"d0": "c1", "d1": "c2", "d2": "d1", "d3": "x", "d4": "c3"}
    assert view.qrels == {"q0": {"d0": 1, "d1": 1, "d4": 1}, "q1": {"d2": 1}}
    assert view.rows == [("cats", "c1"), ("cats", "c2"), ("dogs", "d1"), ("cats", "c3")]
    assert view.query_ids == ["q0", "q0", "q1", "q0"]


def test_bm25_miner_on_pairs_never_mines_a_positive_of_the_same_anchor(tmp_path):
    from embedexp.miners.bm25 import BM25Miner

    rows = [(f"topic {i} question", f"topic {i} answer text") for i in range(6)] + [
        ("topic 0 question", "topic 0 other")
    ]
    ts = _build(tmp_path, _csv(tmp_path / "qa.csv", ["question", "answer"], rows))
    mined = BM25Miner(n_negatives=2, cache_dir=str(tmp_path / "mine")).mine(ts)
    assert mined.columns == ("anchor", "positive", "negative_1", "negative_2") and len(mined) == 7
    for row in mined.rows:
        own = {a for q, a in rows if q == row[0]}
        assert not own & set(row[2:]) and len(set(row[2:])) == 2


def test_scores_none_without_score_columns(tmp_path):
    ts = _build(tmp_path, _csv(tmp_path / "qa.csv", ["question", "answer"], QA))
    assert not ts.has_scores and ts.scores(0) is None


# ---------------------------------------------------------------- one command each (tiny model, in-process)
def _train(tmp_path, *overrides):
    from embedexp.train import train

    from conftest import compose_demo_tiny

    out = tmp_path / "out"
    train(compose_demo_tiny(out, tmp_path / "cache", "logger=none", "data.batch_size=2", *overrides))
    assert (out / "results.json").is_file() and (out / "model").is_dir()
    return json.loads((out / "results.json").read_text())


def test_train_on_a_question_answer_csv_with_bm25_mining(tmp_path):
    """`embedexp-train data=pairs data.train.path=qa.csv miner=bm25`: the new user's csv, mined, in one command."""
    rows = [(f"topic {i} question", f"topic {i} answer text") for i in range(6)]
    qa = _csv(tmp_path / "qa.csv", ["question", "answer"], rows)
    _train(tmp_path, "data=pairs", f"data.train.path={qa}", "~data.eval_sets.stsb_test", "miner=bm25")


@pytest.mark.slow
def test_train_on_a_flagembedding_jsonl_with_sampled_negatives(tmp_path):
    flag = _jsonl(tmp_path / "flag.jsonl", _flag_rows())
    _train(tmp_path, "data=table", f"data.train.path={flag}", "data.train.negatives_per_row=2", "loss=infonce")


def _bad_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nwhat,yes\nwho,\n")
    return bad, f"{bad}: row 2: column 'answer' is empty; expected non-empty text"


def test_bad_csv_through_the_cli_wrapper_is_exit_2_and_one_line(tmp_path, capsys):
    from embedexp.cli import one_line_errors
    from embedexp.train import train

    from conftest import compose_demo_tiny

    bad, expected = _bad_csv(tmp_path)
    cfg = compose_demo_tiny(tmp_path / "out", tmp_path / "cache", "data=table", f"data.train.path={bad}")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        one_line_errors(train)(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err[err.index("embedexp: error: ") :] == f"embedexp: error: {expected}\n", err[-2000:]
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_cli_bad_csv_is_exit_2_and_one_line(tmp_path):
    import subprocess
    import sys

    bad, expected = _bad_csv(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedexp.train",
            "experiment=demo_tiny",
            "data=table",
            f"data.train.path={bad}",
            f"hydra.run.dir={tmp_path / 'out'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr[proc.stderr.index("embedexp: error: ") :] == f"embedexp: error: {expected}\n", proc.stderr[
        -2000:
    ]
    assert not (tmp_path / "out" / "results.json").exists()
