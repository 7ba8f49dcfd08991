"""Training sets: rows of texts in fixed columns, with the kind ("query"/"document") of each column.

`rows` is a Python list for the line-oriented readers (beir, pairs jsonl, labeled_pairs jsonl, sts, sentences)
and a lazy `TableRows` sequence over a memory-mapped Arrow table for `format=table` (and for pairs /
labeled_pairs given a csv, tsv, parquet, arrow file or a dataset folder); code reads rows through
`len(ts)`, `ts.get(i)` or `ts.rows[i]`, never assuming a list.
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
    _fail,
    _finish,
    _jsonl,
    _lines,
    doc_text,
    load_corpus,
    load_pairs,
    load_qrels,
    load_queries,
    load_sts,
)
from embedexp.errors import ConfigError

FORMATS = ("beir", "pairs", "labeled_pairs", "sts", "sentences", "table")
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


@dataclass
class TrainSet:
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]  # a list, or a lazy TableRows (table-backed sets)
    labels: Sequence[float] | None = None
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


def beir_pairs(root: str, split: str = "train", on_error: str = "raise", min_grade: int = 1) -> TrainSet:
    """(query, positive document) for every qrel of `split` with grade >= min_grade."""
    corpus = load_corpus(root, on_error)
    queries = load_queries(root, on_error)
    qrels = load_qrels(root, split, queries, corpus, on_error)
    texts = {did: doc_text(d) for did, d in corpus.items()}
    rows, qids = [], []
    for qid, docs in qrels.items():
        for did, grade in docs.items():
            if grade >= min_grade:
                rows.append((queries[qid], texts[did]))
                qids.append(qid)
    return TrainSet(
        ("anchor", "positive"),
        ("query", "document"),
        rows,
        info={"queries": len(qrels), "corpus": len(corpus)},
        query_ids=qids,
        corpus=texts,
        qrels=qrels,
    )


def pair_rows(path: str, on_error: str = "raise") -> TrainSet:
    rows = load_pairs(path, on_error)
    n_neg = len(rows[0]) - 2 if rows else 0
    columns = ("anchor", "positive", *(f"negative_{i + 1}" for i in range(n_neg)))
    return TrainSet(columns, ("query",) + ("document",) * (1 + n_neg), rows)


def labeled_pair_rows(path: str, on_error: str = "raise") -> TrainSet:
    """jsonl rows {"text_a": ..., "text_b": ..., "label": number} (e.g. 0/1 for contrastive losses)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"labeled pairs file {path} does not exist")
    rows, labels = [], []
    for lineno, obj in _jsonl(path, on_error):
        a, b, lab = obj.get("text_a"), obj.get("text_b"), obj.get("label")
        ok = isinstance(a, str) and a.strip() and isinstance(b, str) and b.strip()
        if not ok or not isinstance(lab, (int, float)) or isinstance(lab, bool) or lab != lab:
            _fail(on_error, path, f"line {lineno}: expected non-empty 'text_a', 'text_b' and a numeric 'label'")
            continue
        rows.append((a, b))
        labels.append(float(lab))
    _finish(path, len(rows), "labeled pairs")
    return TrainSet(("text_a", "text_b"), ("document", "document"), rows, labels=labels)


def sts_rows(
    path: str, on_error: str = "raise", max_score: float = 5.0, binary_threshold: float | None = None
) -> TrainSet:
    """(text_a, text_b) with label = score / max_score in [0, 1], or 1/0 by `binary_threshold` on the raw score."""
    data = load_sts(path, max_score=max_score, on_error=on_error)
    if binary_threshold is None:
        labels = [s / max_score for _, _, s in data]
    else:
        labels = [1.0 if s >= binary_threshold else 0.0 for _, _, s in data]
    return TrainSet(("text_a", "text_b"), ("document", "document"), [(a, b) for a, b, _ in data], labels=labels)


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
) -> TrainSet:
    """Unlabelled text for TSDAE: a BEIR corpus (`root`) or a text file (`path`, one text per line).

    unit="sentence" splits documents into sentences; rows are (damaged, original) after deletion noise.
    """
    if unit not in ("sentence", "document"):
        raise ConfigError(f"data.train.unit={unit!r}; expected 'sentence' or 'document'")
    if root:
        texts = [doc_text(d) for d in load_corpus(root, on_error).values()]
    elif path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"sentences file {p} does not exist")
        texts = [line.strip() for _, line in _lines(p, on_error) if line.strip()]
        _finish(p, len(texts), "text lines")
    else:
        raise ConfigError("data.train needs `root` (a BEIR folder) or `path` (a text file) for format=sentences")
    if unit == "sentence":
        texts = [s.strip() for t in texts for s in _SENTENCE_END.split(t)]
    rows = [(t,) for t in texts if len(t.split()) >= min_words]
    if max_rows:
        rows = random.Random(seed).sample(rows, min(max_rows, len(rows)))
    return TrainSet(
        ("damaged", "original"),
        ("document", "document"),
        rows,
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
        else:
            spec.pop("cache_dir", None)
    try:
        if fmt == "table":
            return table_rows(spec, seed, on_error)
        if fmt == "beir":
            return beir_pairs(spec["root"], spec.get("split", "train"), on_error, int(spec.get("min_grade", 1)))
        if fmt == "pairs":
            return pair_rows(spec["path"], on_error)
        if fmt == "labeled_pairs":
            return labeled_pair_rows(spec["path"], on_error)
        if fmt == "sts":
            return sts_rows(spec["path"], on_error, float(spec.get("max_score", 5.0)), spec.get("binary_threshold"))
        if fmt == "sentences":
            return sentence_rows(seed=seed, on_error=on_error, **spec)
    except KeyError as e:
        raise ConfigError(f"data.train.{e.args[0]} is required for format={fmt}") from None
    except TypeError as e:
        raise ConfigError(f"data.train for format={fmt}: {e}") from None
    raise ConfigError(f"data.train.format={fmt!r}; expected one of {', '.join(FORMATS)}")
