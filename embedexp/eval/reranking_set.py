"""Reranking data for mteb's Reranking tasks, read from a local jsonl file.

One query per line, with the documents to rerank split into relevant and irrelevant ones:

    {"query": "how do I mount a usb drive", "positive": ["mounting usb sticks"], "negative": ["install java", ...]}

This is the layout of mteb's original reranking datasets (AskUbuntuDupQuestions, SciDocsRR,
StackOverflowDupQuestions: `query` / `positive` / `negative`) and of sentence-transformers'
`RerankingEvaluator` samples. Each query's candidates are exactly its positives + negatives; the model ranks
them by cosine similarity, and mteb scores the ranking (MAP@1000 for the tasks above, also MRR@10, nDCG@10).

Rows with no positive or no negative are dropped and counted in the log, as mteb's own conversion of this layout
does (`AbsTaskReranking.transform_old_dataset_format`): they cannot be ranked wrongly. A file that has no row
left is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from embedexp.errors import ConfigError, DataError
from embedexp.eval.sets import _hash_files

log = logging.getLogger(__name__)

COLUMNS = ("query", "positive", "negative")


@dataclass
class RerankingSet:
    """Queries with their candidate documents: `rows[i] = (query, positives, negatives)` (texts)."""

    name: str
    rows: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    fingerprint: str = ""
    dropped: int = 0  # rows without a positive or without a negative (not scored, as in mteb)


def _texts(value, path: Path, lineno: int, column: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        got = type(value).__name__ if not isinstance(value, list) else "a list with a non-string item"
        raise DataError(f'{path}: line {lineno}: column "{column}" must be a list of strings; got {got}')
    return list(value)


def read_reranking_jsonl(path: Path) -> tuple[list[tuple[str, list[str], list[str]]], int]:
    """(rows, dropped) of a reranking jsonl file; rows without a positive or a negative are dropped.

    Raises:
        DataError: missing file, a line that is not a JSON object, a missing or mistyped column, no row with both
            a positive and a negative (file, line and column named).
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a reranking jsonl file (query, positive, negative)")
    rows, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}: line {lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(
                    f'{path}: line {lineno}: expected a JSON object {{"query": ..., "positive": [...], '
                    f'"negative": [...]}}; got {type(row).__name__}'
                )
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise DataError(
                    f'{path}: line {lineno}: column "{missing[0]}" is missing; expected the columns '
                    + ", ".join(COLUMNS)
                )
            query = row["query"]
            if not isinstance(query, str) or not query.strip():
                raise DataError(f'{path}: line {lineno}: column "query" must be a non-empty string; got {query!r}')
            positive = _texts(row["positive"], path, lineno, "positive")
            negative = _texts(row["negative"], path, lineno, "negative")
            if not positive or not negative:
                dropped += 1
                continue
            rows.append((query, positive, negative))
    if not rows:
        raise DataError(
            f"{path}: no row with at least one positive and one negative document ({dropped} row(s) dropped); "
            "expected one JSON line per query"
        )
    return rows, dropped


def load_reranking_set(name: str, spec: dict, key: str) -> RerankingSet:
    """`{type: reranking, path}`: a jsonl of {"query", "positive", "negative"} rows (see the module docstring).

    Raises:
        ConfigError: no path. DataError: a bad line (file, line and column named).
    """
    if not spec.get("path"):
        raise ConfigError(f"{key}.path is missing; expected a reranking .jsonl file (query, positive, negative)")
    path = Path(str(spec["path"])).expanduser()
    rows, dropped = read_reranking_jsonl(path)
    if dropped:
        log.info("%s: %d row(s) without a positive or a negative dropped (as mteb does)", path, dropped)
    return RerankingSet(name, rows, _hash_files([path], "reranking:1"), dropped)
