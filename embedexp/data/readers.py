"""Readers for BEIR folders, STS tsv files, pair / labelled-pair jsonl files and plain text files.

Every problem is reported as one line naming the file (and line) and what was expected.
`on_error="skip"` drops malformed rows instead, counts them in `SKIPPED` and logs one warning per file
("skipped 3 bad rows in corpus.jsonl: first at line 17: ..."); a file with no valid row is still an error.

The `iter_*` readers are validating generators (one row at a time, nothing kept but what a check needs: the ids
seen, the number of negatives of the first row); the training formats write their output into Arrow files
(embedexp.data.line_rows). The `load_*` readers return the same rows as lists / dicts (eval sets, miners).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Iterator

from embedexp.errors import DataError

ON_ERROR = ("raise", "skip")
SKIPPED: Counter = Counter()  # file -> rows skipped with on_error="skip"
_PENDING: dict[str, list] = {}  # file -> [rows skipped, first message] of the read in progress
FINISHED: dict[str, tuple[int, str]] = {}  # file -> (rows skipped, first message) of its last finished read
log = logging.getLogger("embedexp.data")


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise DataError(f"data.on_error={on_error!r}; expected one of {ON_ERROR}")


def _fail(on_error: str, path: Path, msg: str) -> None:
    if on_error == "raise":
        raise DataError(f"{path}: {msg}")
    SKIPPED[str(path)] += 1
    _PENDING.setdefault(str(path), [0, msg])[0] += 1


def _finish(path: Path, kept: int, what: str) -> None:
    """End of a file: log what on_error=skip dropped; no valid row at all is an error either way."""
    skipped, first = _PENDING.pop(str(path), (0, ""))
    FINISHED[str(path)] = (skipped, first)
    if skipped:
        log.warning("skipped %d bad row%s in %s: first at %s", skipped, "" if skipped == 1 else "s", path, first)
    if kept == 0:
        extra = f" ({skipped} bad rows skipped; first at {first})" if skipped else ""
        raise DataError(f"{path}: no valid {what}{extra}")


def replay_skipped(path: Path, skipped: int, first: str) -> None:
    """What `_finish` did for a file read earlier (rows of the same content come from a cache): count the
    skipped rows in `SKIPPED` and log the same warning."""
    if skipped:
        SKIPPED[str(path)] += skipped
        log.warning("skipped %d bad row%s in %s: first at %s", skipped, "" if skipped == 1 else "s", path, first)


def _lines(path: Path, on_error: str) -> Iterator[tuple[int, str]]:
    """(line number, text without the line break) of a UTF-8 (optionally gzipped) file; a BOM is dropped.

    A line that is not UTF-8 is a bad row (named by its line number); an empty file is an error.
    """
    empty = True
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                empty = False
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    _fail(
                        on_error,
                        path,
                        f"line {lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line); "
                        "expected a UTF-8 file",
                    )
                    continue
                if lineno == 1:
                    text = text.lstrip("\ufeff")
                yield lineno, text.rstrip("\r\n")
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if empty:
        raise DataError(f"{path}: empty file")


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{what} folder {path} does not exist")
    return path


def _jsonl(path: Path, on_error: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object); empty lines are ignored; an empty file is an error.

    A line that is not a JSON object, or holds a string no tokenizer can take (a lone surrogate), is a
    bad row: DataError naming file and line, or skipped and counted under on_error="skip".
    """
    n = 0
    for lineno, line in _lines(path, on_error):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(on_error, path, f"line {lineno}: not valid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            _fail(on_error, path, f"line {lineno}: expected a JSON object")
            continue
        problem = _untokenizable(obj)
        if problem:
            _fail(on_error, path, f"line {lineno}: {problem}")
            continue
        n += 1
        yield lineno, obj
    if n == 0 and not _PENDING.get(str(path)):
        raise DataError(f"{path}: no records (empty file)")


def text_problem(text: str) -> str | None:
    """Why a tokenizer cannot take `text`, or None: a lone surrogate (U+D800..U+DFFF) is the one case.

    JSON may spell one as a valid escape ("\\ud800"); Python keeps it in the str, and Hugging Face
    tokenizers then raise TypeError (the text has no UTF-8 form). Files read as UTF-8 cannot hold one.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"lone surrogate {text[e.start]!r} at character {e.start}"
    return None


def _untokenizable(value, where: str = "") -> str | None:
    """The first string (key or value, at any depth) of a JSON value that a tokenizer cannot take."""
    if isinstance(value, str):
        problem = text_problem(value)
        return f"{where or 'value'} has a {problem}; expected valid Unicode text" if problem else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _untokenizable(k, f"key {where + '.' if where else ''}{k!r}") or _untokenizable(
                v, f"{where}.{k}" if where else repr(k)
            )
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _untokenizable(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _find(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no {what} file; expected one of {', '.join(names)}")


def doc_text(doc: dict) -> str:
    """How a document is encoded: title + " " + text, stripped (the MTEB/BEIR convention)."""
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


def corpus_file(root: str | Path) -> Path:
    """The corpus file of a BEIR folder (corpus.jsonl or corpus.jsonl.gz). Raises DataError when missing."""
    return _find(require_dir(root, "BEIR data"), ("corpus.jsonl", "corpus.jsonl.gz"), "corpus")


def queries_file(root: str | Path) -> Path:
    """The queries file of a BEIR folder (queries.jsonl or queries.jsonl.gz). Raises DataError when missing."""
    return _find(require_dir(root, "BEIR data"), ("queries.jsonl", "queries.jsonl.gz"), "queries")


def load_corpus(root: str | Path, on_error: str = "raise") -> dict[str, dict]:
    """corpus.jsonl -> {doc id: {"title", "text"}} in file order (see `iter_corpus`)."""
    return dict(iter_corpus(root, on_error))


def iter_corpus(root: str | Path, on_error: str = "raise") -> Iterator[tuple[str, dict]]:
    """(doc id, {"title", "text"}) of every valid document of a BEIR folder's corpus, in file order.

    Raises:
        DataError: a missing folder/file, or (on_error="raise") a line without '_id', without a string 'text',
            with empty title and text, or repeating an id; no valid document at all (either way).
    """
    _check_on_error(on_error)
    path = corpus_file(root)
    seen: set[str] = set()
    kept = 0
    for lineno, obj in _jsonl(path, on_error):
        doc_id = obj.get("_id")
        if doc_id is None or str(doc_id) == "":
            _fail(on_error, path, f"line {lineno}: missing '_id'")
            continue
        doc_id = str(doc_id)
        if "text" not in obj or not isinstance(obj["text"], str):
            _fail(on_error, path, f"line {lineno}: document {doc_id!r} has no string 'text'")
            continue
        doc = {"title": str(obj.get("title") or ""), "text": obj["text"]}
        if not doc_text(doc):
            _fail(on_error, path, f"line {lineno}: document {doc_id!r} has empty title and text")
            continue
        if doc_id in seen:
            _fail(on_error, path, f"line {lineno}: duplicate document id {doc_id!r}")
            continue
        seen.add(doc_id)
        kept += 1
        yield doc_id, doc
    _finish(path, kept, "documents")


def load_queries(root: str | Path, on_error: str = "raise") -> dict[str, str]:
    _check_on_error(on_error)
    path = queries_file(root)
    queries: dict[str, str] = {}
    for lineno, obj in _jsonl(path, on_error):
        qid = obj.get("_id")
        if qid is None or str(qid) == "":
            _fail(on_error, path, f"line {lineno}: missing '_id'")
            continue
        qid = str(qid)
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            _fail(on_error, path, f"line {lineno}: query {qid!r} has empty or missing 'text'")
            continue
        if qid in queries:
            _fail(on_error, path, f"line {lineno}: duplicate query id {qid!r}")
            continue
        queries[qid] = text
    _finish(path, len(queries), "queries")
    return queries


def load_qrels(
    root: str | Path,
    split: str,
    queries: dict | None = None,
    corpus: dict | None = None,
    on_error: str = "raise",
) -> dict[str, dict[str, int]]:
    """qrels/{split}.tsv -> {query_id: {doc_id: grade}}; ids are checked against queries/corpus when given.

    Rows are `query-id corpus-id score` (or TREC's `qid 0 docid score`) with an integer score; a
    fractional score (0.9, 0.5) is a bad row (DataError naming file and line, or skipped and counted
    with on_error="skip"), never truncated.
    """
    _check_on_error(on_error)
    root = require_dir(root, "BEIR data")
    path = root / "qrels" / f"{split}.tsv"
    if not path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise DataError(f"{path}: qrels file for split {split!r} not found (available splits: {have or 'none'})")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in _lines(path, on_error):
        row = line.split("\t")
        if lineno == 1 and row[0].lower() in ("query-id", "query_id", "qid"):
            continue
        if not line.strip():
            continue
        if len(row) == 4:  # TREC layout: qid 0 docid grade
            row = [row[0], row[2], row[3]]
        if len(row) != 3:
            _fail(
                on_error,
                path,
                f"line {lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}",
            )
            continue
        qid, did, score = row
        grade = _grade(score)
        if isinstance(grade, str):
            _fail(on_error, path, f"line {lineno}: score {score!r} {grade}")
            continue
        if queries is not None and qid not in queries:
            _fail(on_error, path, f"line {lineno}: query id {qid!r} is not in queries.jsonl")
            continue
        if corpus is not None and did not in corpus:
            _fail(on_error, path, f"line {lineno}: corpus id {did!r} is not in the corpus")
            continue
        qrels.setdefault(qid, {})[did] = grade
    _finish(path, len(qrels), "qrels rows")
    return qrels


def _grade(score: str) -> int | str:
    """A qrels relevance grade: an integer ("2", "-1", also "2.0"); else what is wrong with it (a str)."""
    text = score.strip()
    if "_" in text:  # Python would read "1_0" as 10
        return "is not a number"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return "is not a number"
    if math.isfinite(value) and value.is_integer():
        return int(value)
    return (
        "is not a whole number; expected an integer grade (e.g. 0, 1, 2), "
        "not a fraction that would be truncated to another relevance"
    )


def load_sts(path: str | Path, max_score: float = 5.0, on_error: str = "raise") -> list[tuple[str, str, float]]:
    """STS tsv with a header naming `score`, `sentence1`, `sentence2` (other columns ignored); see `iter_sts`."""
    return list(iter_sts(path, max_score, on_error))


def existing_file(path: str | Path, what: str) -> Path:
    """`path` (user home expanded) if it is a file; else DataError "{what} file {path} does not exist"."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    return path


def iter_sts(path: str | Path, max_score: float = 5.0, on_error: str = "raise") -> Iterator[tuple[str, str, float]]:
    """(sentence1, sentence2, score) of every valid row of an STS tsv with a header naming `score`, `sentence1`,
    `sentence2` (other columns ignored); score in [0, max_score].

    Split on tabs only: STS sentences contain quote characters that csv quoting would merge.
    Raises:
        DataError: a missing file or header; (on_error="raise") a short row, a score that is not a number in
            range, an empty sentence; no valid row at all (either way).
    """
    _check_on_error(on_error)
    path = existing_file(path, "STS")
    kept = 0
    columns: tuple[int, int, int] | None = None
    for lineno, line in _lines(path, on_error):
        if columns is None:
            header = line.split("\t")
            try:
                columns = tuple(header.index(c) for c in ("score", "sentence1", "sentence2"))  # type: ignore[assignment]
            except ValueError:
                raise DataError(
                    f"{path}: line {lineno}: header must name the columns score, sentence1, sentence2 (tab separated); got {header}"
                ) from None
            continue
        if not line.strip():
            continue
        i_score, i_a, i_b = columns
        cols = line.split("\t")
        if len(cols) <= max(columns):
            _fail(
                on_error,
                path,
                f"line {lineno}: expected at least {max(columns) + 1} tab-separated columns, got {len(cols)}",
            )
            continue
        try:
            score = float(cols[i_score])
        except ValueError:
            _fail(on_error, path, f"line {lineno}: score {cols[i_score]!r} is not a number")
            continue
        if not 0.0 <= score <= max_score:  # also NaN
            _fail(on_error, path, f"line {lineno}: score {score} outside [0, {max_score}]")
            continue
        if not cols[i_a].strip() or not cols[i_b].strip():
            _fail(on_error, path, f"line {lineno}: empty sentence")
            continue
        kept += 1
        yield cols[i_a], cols[i_b], score
    _finish(path, kept, "STS pairs")


def load_pairs(path: str | Path, on_error: str = "raise") -> list[tuple[str, ...]]:
    """jsonl rows {"anchor"|"query": ..., "positive": ..., "negatives": [...] | "negative": ...}; see `iter_pairs`."""
    return list(iter_pairs(path, on_error))


def iter_pairs(path: str | Path, on_error: str = "raise") -> Iterator[tuple[str, ...]]:
    """(anchor, positive, negative_1..negative_n) of every valid row of a pairs jsonl file
    {"anchor"|"query": ..., "positive": ..., "negatives": [...] | "negative": ...}.

    Every row must have the same number of negatives as the first valid row (columns are fixed per batch).
    Raises:
        DataError: a missing or empty file; (on_error="raise") a line that is not a JSON object, a missing or
            empty text, a different number of negatives; no valid row at all (either way).
    """
    _check_on_error(on_error)
    path = existing_file(path, "pairs")
    kept = 0
    n_neg = None
    for lineno, obj in _jsonl(path, on_error):
        anchor = obj.get("anchor", obj.get("query"))
        positive = obj.get("positive")
        negs = obj.get("negatives", [obj["negative"]] if "negative" in obj else [])
        texts = [anchor, positive, *negs] if isinstance(negs, list) else None
        if texts is None or not all(isinstance(t, str) and t.strip() for t in texts):
            _fail(
                on_error,
                path,
                f"line {lineno}: expected non-empty strings 'anchor' (or 'query'), 'positive' and optional 'negatives' list",
            )
            continue
        if n_neg is None:
            n_neg = len(negs)
        elif len(negs) != n_neg:
            _fail(on_error, path, f"line {lineno}: {len(negs)} negatives, but earlier rows have {n_neg}")
            continue
        kept += 1
        yield tuple(texts)
    _finish(path, kept, "pairs")


def iter_labeled_pairs(path: str | Path, on_error: str = "raise") -> Iterator[tuple[str, str, float]]:
    """(text_a, text_b, label) of every valid row of a jsonl file {"text_a", "text_b", "label": number}.

    Raises:
        DataError: a missing or empty file; (on_error="raise") a line that is not a JSON object, an empty or
            missing text, a label that is not a finite number (true/false, NaN, Infinity refused); no valid row.
    """
    _check_on_error(on_error)
    path = existing_file(path, "labeled pairs")
    kept = 0
    for lineno, obj in _jsonl(path, on_error):
        a, b, lab = obj.get("text_a"), obj.get("text_b"), obj.get("label")
        ok = isinstance(a, str) and a.strip() and isinstance(b, str) and b.strip()
        if not ok or not _finite_number(lab):
            _fail(on_error, path, f"line {lineno}: expected non-empty 'text_a', 'text_b' and a finite numeric 'label'")
            continue
        kept += 1
        yield a, b, float(lab)  # type: ignore[arg-type]
    _finish(path, kept, "labeled pairs")


def _finite_number(value) -> bool:
    """A JSON number (not true/false) that is a finite float (NaN, Infinity and ints beyond float refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def iter_text_lines(path: str | Path, on_error: str = "raise") -> Iterator[str]:
    """Every non-blank line of a UTF-8 text file, stripped (one text per line: TSDAE sentences).

    Raises:
        DataError: a missing or empty file; (on_error="raise") a line that is not UTF-8; no text at all.
    """
    _check_on_error(on_error)
    path = existing_file(path, "sentences")
    kept = 0
    for _, line in _lines(path, on_error):
        if line.strip():
            kept += 1
            yield line.strip()
    _finish(path, kept, "text lines")
