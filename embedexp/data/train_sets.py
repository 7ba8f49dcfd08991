"""Training sets: rows of texts in fixed columns, with the kind ("query"/"document") of each column.

Every format builds its rows on one layer, a memory-mapped Arrow table read lazily: `format=table` (and pairs /
labeled_pairs given a csv, tsv, parquet, arrow file or a dataset folder) opens the table with `datasets`
(embedexp.data.tables); the line-oriented formats (beir, pairs jsonl, labeled_pairs jsonl, sts, sentences incl.
a plain text file) run their validating readers (embedexp.data.readers) and write the rows into an Arrow file
cached by a digest of the source's bytes and the reader options (embedexp.data.line_rows). `rows` is then a
`TableRows` (embedexp.data.table_rows) or, for sentences, a `TextRows` (embedexp.data.text_rows); labels are a
float64 column of the same table. Training code reads rows through `len(ts)`, `ts.get(i)` or `ts.rows[i]`; a
miner's output (and a TrainSet built by hand) may still hold a list.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedexp.data.readers import (
    DataError,
    corpus_file,
    doc_text,
    existing_file,
    iter_corpus,
    iter_labeled_pairs,
    iter_pairs,
    iter_sts,
    iter_text_lines,
    load_corpus,
    load_qrels,
    load_queries,
    queries_file,
)
from embedexp.errors import ConfigError

FORMATS = ("beir", "pairs", "labeled_pairs", "sts", "sentences", "table")
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


@dataclass
class TrainSet:
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]  # lazy TableRows / TextRows from build_train_set; a list from miners or by hand
    labels: Sequence[float] | None = None  # text_rows.Labels (an Arrow float64 column) from build_train_set
    info: dict[str, Any] = field(default_factory=dict)
    # retrieval-shaped sets keep ids so a miner can add negatives
    query_ids: list[str] | None = None
    corpus: dict[str, str] | None = None  # doc id -> text as encoded
    qrels: dict[str, dict[str, int]] | None = None
    # per-row text transform (TSDAE noise): row -> row
    transform: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, i: int) -> tuple[str, ...]:
        """Row i's texts, one per column (the current epoch's draw for table-backed sets)."""
        return self.transform(i, self.rows[i]) if self.transform else self.rows[i]

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the sampled positives/negatives of table-backed rows for `epoch` (cheap: draws are lazy)."""
        if hasattr(self.rows, "set_epoch"):
            self.rows.set_epoch(epoch)

    @property
    def has_scores(self) -> bool:
        """Whether the data carries teacher scores (pos_scores / neg_scores columns)."""
        return bool(getattr(self.rows, "has_scores", False))

    def scores(self, i: int) -> tuple[float, ...] | None:
        """Teacher scores of row i aligned with columns[1:] (positive, then negatives; NaN where the data
        has none for that side), for the current epoch's draw; None when the data has no scores."""
        return self.rows.scores(i) if self.has_scores else None  # type: ignore[union-attr]

    def fingerprint(self) -> str:
        """A 16-hex-digit digest of the rows as trained on (stable across processes: blake2b).

        List rows: columns, kinds, every text, labels (about 1 s per GB of text). Table rows: the source
        files' bytes, the column mapping, the draw settings (seed, negatives_per_row, positives) and the rows
        kept, without reading the rows one by one.
        """
        h = hashlib.blake2b(digest_size=8)
        if hasattr(self.rows, "fingerprint"):
            h.update(repr((self.columns, self.kinds, len(self.rows), self.rows.fingerprint())).encode())
            return h.hexdigest()
        h.update(repr((self.columns, self.kinds, len(self.rows))).encode())
        for row in self.rows:
            h.update("\x1f".join(row).encode("utf-8", "surrogatepass"))
            h.update(b"\x1e")
        if self.labels is not None:
            h.update(repr([float(x) for x in self.labels]).encode())
        return h.hexdigest()


def _table_rows(ds, key: str, where: str, mapping, on_error: str):
    """TableRows over an Arrow table a line reader wrote (every row already valid: nothing is drawn)."""
    from embedexp.data.table_rows import TableRows

    return TableRows(ds, mapping, where, key, seed=0, on_error=on_error)


def beir_pairs(
    root: str, split: str = "train", on_error: str = "raise", min_grade: int = 1, cache_dir: str | None = None
) -> TrainSet:
    """(query, positive document) for every qrel of `split` with grade >= min_grade, as Arrow-backed rows.

    The corpus (doc id -> text), qrels and one query id per row stay dicts/lists (miners use them).
    Raises:
        DataError: an unreadable BEIR folder or (on_error="raise") a bad line; no qrel with grade >= min_grade.
    """
    from embedexp.data.formats import Mapping
    from embedexp.data.line_rows import arrow_rows, text_schema

    corpus = load_corpus(root, on_error)
    queries = load_queries(root, on_error)
    qrels = load_qrels(root, split, queries, corpus, on_error)
    n_corpus = len(corpus)
    texts = {did: doc_text(d) for did, d in corpus.items()}
    del corpus
    qids = [qid for qid, docs in qrels.items() for grade in docs.values() if grade >= min_grade]
    qrels_path = Path(root).expanduser() / "qrels" / f"{split}.tsv"
    if not qids:
        raise DataError(f"{qrels_path}: no qrels row with a grade >= {min_grade}; expected at least one positive")

    def rows():
        for qid, docs in qrels.items():
            for did, grade in docs.items():
                if grade >= min_grade:
                    yield queries[qid], texts[did]

    ds, key = arrow_rows(
        "beir",
        [corpus_file(root), queries_file(root), qrels_path],
        {"split": split, "min_grade": min_grade, "on_error": on_error},
        rows,
        lambda _: text_schema(["anchor", "positive"]),
        cache_dir,
    )
    table = _table_rows(ds, key, str(qrels_path), Mapping("beir", "anchor", ["positive"]), on_error)
    return TrainSet(
        table.columns,
        table.kinds,
        table,
        info={"queries": len(qrels), "corpus": n_corpus},
        query_ids=qids,
        corpus=texts,
        qrels=qrels,
    )


def pair_rows(path: str, on_error: str = "raise", cache_dir: str | None = None) -> TrainSet:
    """(anchor, positive, negative_1..n) rows of a pairs jsonl file (readers.iter_pairs), Arrow-backed."""
    from embedexp.data.formats import Mapping
    from embedexp.data.line_rows import arrow_rows, text_schema

    p = existing_file(path, "pairs")

    def schema(row):
        n_neg = len(row) - 2 if row else 0
        return text_schema(["anchor", "positive", *(f"negative_{i + 1}" for i in range(n_neg))])

    ds, key = arrow_rows("pairs", [p], {"on_error": on_error}, lambda: iter_pairs(p, on_error), schema, cache_dir)
    negatives = [c for c in ds.column_names if c.startswith("negative_")]
    rows = _table_rows(ds, key, str(p), Mapping("pairs", "anchor", ["positive"], negatives), on_error)
    return TrainSet(rows.columns, rows.kinds, rows)


def _labelled(name: str, p: Path, options: dict, rows, on_error: str, cache_dir: str | None) -> TrainSet:
    """(text_a, text_b) rows with a float64 `label` column, Arrow-backed; TrainSet.labels reads that column."""
    from embedexp.data.formats import Mapping
    from embedexp.data.line_rows import arrow_rows, text_schema
    from embedexp.data.text_rows import Labels

    schema = text_schema(["text_a", "text_b"], label="label")
    ds, key = arrow_rows(name, [p], options, rows, lambda _: schema, cache_dir)
    table = _table_rows(ds, key, str(p), Mapping(name, "text_a", ["text_b"], label="label"), on_error)
    return TrainSet(table.columns, table.kinds, table, labels=Labels(table.labels()))


def labeled_pair_rows(path: str, on_error: str = "raise", cache_dir: str | None = None) -> TrainSet:
    """jsonl rows {"text_a": ..., "text_b": ..., "label": number} (e.g. 0/1 for contrastive losses)."""
    p = existing_file(path, "labeled pairs")
    return _labelled(
        "labeled_pairs", p, {"on_error": on_error}, lambda: iter_labeled_pairs(p, on_error), on_error, cache_dir
    )


def sts_rows(
    path: str,
    on_error: str = "raise",
    max_score: float = 5.0,
    binary_threshold: float | None = None,
    cache_dir: str | None = None,
) -> TrainSet:
    """(text_a, text_b) with label = score / max_score in [0, 1], or 1/0 by `binary_threshold` on the raw score."""
    p = existing_file(path, "STS")

    def rows():
        for a, b, s in iter_sts(p, max_score=max_score, on_error=on_error):
            if binary_threshold is None:
                yield a, b, s / max_score
            else:
                yield a, b, 1.0 if s >= binary_threshold else 0.0

    options = {"on_error": on_error, "max_score": max_score, "binary_threshold": binary_threshold}
    return _labelled("sts", p, options, rows, on_error, cache_dir)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


class DeleteNoise:
    """Row transform for TSDAE: (text,) -> (damaged, original); the same deletion for the same row and seed."""

    def __init__(self, ratio: float, seed: int) -> None:
        from embedexp.data.noise import delete_words

        self.delete_words = delete_words
        self.ratio = ratio
        self.seed = seed

    def __call__(self, i: int, row: tuple[str, ...]) -> tuple[str, str]:
        return self.delete_words(row[0], self.ratio, random.Random(self.seed * 1_000_003 + i)), row[0]


def sentence_rows(
    root: str | None = None,
    path: str | None = None,
    unit: str = "sentence",
    max_rows: int | None = None,
    min_words: int = 4,
    deletion_ratio: float = 0.6,
    seed: int = 0,
    on_error: str = "raise",
    cache_dir: str | None = None,
) -> TrainSet:
    """Unlabelled text for TSDAE: a BEIR corpus (`root`) or a text file (`path`, one text per line).

    unit="sentence" splits documents into sentences; texts with fewer than `min_words` words are dropped;
    `max_rows` keeps a seeded sample (`random.Random(seed).sample`). The texts are Arrow-backed `(text,)` rows
    (embedexp.data.text_rows.TextRows); `get(i)` gives (damaged, original) after deletion noise.
    Raises:
        ConfigError: an unknown `unit`, or neither `root` nor `path`; DataError: unreadable data or a bad line.
    """
    from embedexp.data.line_rows import arrow_rows, text_schema
    from embedexp.data.text_rows import TextRows

    if unit not in ("sentence", "document"):
        raise ConfigError(f"data.train.unit={unit!r}; expected 'sentence' or 'document'")
    if root:
        src = corpus_file(root)

        def texts():
            return (doc_text(d) for _, d in iter_corpus(root, on_error))
    elif path:
        src = existing_file(path, "sentences")

        def texts():
            return iter_text_lines(src, on_error)
    else:
        raise ConfigError("data.train needs `root` (a BEIR folder) or `path` (a text file) for format=sentences")

    def rows():
        for t in texts():
            for s in (x.strip() for x in _SENTENCE_END.split(t)) if unit == "sentence" else (t,):
                if len(s.split()) >= min_words:
                    yield (s,)

    options = {"on_error": on_error, "unit": unit, "min_words": min_words, "source": "corpus" if root else "lines"}
    ds, key = arrow_rows("sentences", [src], options, rows, lambda _: text_schema(["text"]), cache_dir)
    index = None
    if max_rows:
        n = ds.num_rows
        index = random.Random(seed).sample(range(n), min(max_rows, n))  # the rows random.sample(rows) picks
    return TrainSet(
        ("damaged", "original"),
        ("document", "document"),
        TextRows(ds, "text", key, index),
        transform=DeleteNoise(deletion_ratio, seed),
        info={"unit": unit},
    )


TABLE_KEYS = (
    "path",
    "split",
    "kind",
    "columns",
    "negatives_per_row",
    "short_negatives",
    "positives",
    "cache_dir",
)


def table_rows(spec: dict, seed: int = 0, on_error: str = "raise") -> TrainSet:
    """A TrainSet over a table opened with `datasets` (see embedexp.data.tables and embedexp.data.formats).

    spec keys: path (file, folder or hub name), split, kind (file kind when the suffix does not say), columns
    (role -> column mapping), negatives_per_row, short_negatives (repeat|fail), positives (first|sample|all),
    cache_dir (datasets' Arrow cache).
    Raises:
        ConfigError: unknown keys or values; DataError: unreadable data or a bad row (file, row, column).
    """
    from embedexp.data.formats import resolve
    from embedexp.data.table_rows import TableRows
    from embedexp.data.tables import files_digest, open_table

    unknown = sorted(set(spec) - set(TABLE_KEYS) - {"format", "on_error"})
    if unknown:
        raise ConfigError(
            f"data.train.{unknown[0]} is not a key of a table source; expected some of {', '.join(TABLE_KEYS)}"
        )
    if not spec.get("path"):
        raise ConfigError("data.train.path is required for format=table (a file, a dataset folder or a hub name)")
    ds, files, what = open_table(str(spec["path"]), spec.get("split"), spec.get("cache_dir"), spec.get("kind"))
    where = str(spec["path"])
    mapping = resolve(list(ds.column_names), dict(spec.get("columns") or {}), where)
    fp = files_digest(files, str(spec.get("split"))) if files else str(getattr(ds, "_fingerprint", where))
    npr = spec.get("negatives_per_row")
    rows = TableRows(
        ds,
        mapping,
        where,
        fp,
        negatives_per_row=None if npr is None else int(npr),
        short_negatives=spec.get("short_negatives", "repeat"),
        positives=spec.get("positives", "first"),
        seed=seed,
        on_error=on_error,
        cache_dir=spec.get("cache_dir"),
    )
    info = {
        "source": what,
        "convention": mapping.convention,
        "columns_used": mapping.describe(),
        "table_rows": rows.table.num_rows,
    }
    if rows.skipped:
        info["skipped_rows"] = rows.skipped
    return TrainSet(rows.columns, rows.kinds, rows, labels=rows.labels(), info=info)


def _is_table_path(path) -> bool:
    """pairs/labeled_pairs given a non-JSON file (csv, parquet...) or a folder: read as a table, never as JSON."""
    from pathlib import Path

    p = Path(str(path)).expanduser()
    return p.is_dir() or not str(p).lower().endswith(JSON_SUFFIXES)


def build_train_set(spec: dict, seed: int = 0) -> TrainSet:
    """The training set a `data.train` spec names (format beir, pairs, labeled_pairs, sts, sentences or table).

    Raises:
        ConfigError: a missing/unknown key or format; DataError: unreadable data or a bad row.
    """
    spec = dict(spec)
    fmt = spec.pop("format", None)
    on_error = spec.pop("on_error", "raise")
    if fmt in ("pairs", "labeled_pairs") and spec.get("path"):
        table_keys = ("columns", "negatives_per_row", "positives", "split", "kind")
        if _is_table_path(spec["path"]) or any(spec.get(k) is not None for k in table_keys):
            fmt = "table"
    cache = spec.pop("cache_dir", None) if fmt != "table" else None
    try:
        if fmt == "table":
            return table_rows(spec, seed, on_error)
        if fmt == "beir":
            split, grade = spec.get("split", "train"), int(spec.get("min_grade", 1))
            return beir_pairs(spec["root"], split, on_error, grade, cache)
        if fmt == "pairs":
            return pair_rows(spec["path"], on_error, cache)
        if fmt == "labeled_pairs":
            return labeled_pair_rows(spec["path"], on_error, cache)
        if fmt == "sts":
            max_score = float(spec.get("max_score", 5.0))
            return sts_rows(spec["path"], on_error, max_score, spec.get("binary_threshold"), cache)
        if fmt == "sentences":
            return sentence_rows(seed=seed, on_error=on_error, cache_dir=cache, **spec)
    except KeyError as e:
        raise ConfigError(f"data.train.{e.args[0]} is required for format={fmt}") from None
    except TypeError as e:
        raise ConfigError(f"data.train for format={fmt}: {e}") from None
    raise ConfigError(f"data.train.format={fmt!r}; expected one of {', '.join(FORMATS)}")
