"""Training sets: rows of texts in fixed columns, with the kind ("query"/"document") of each column."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embedexp.data.readers import doc_text, load_corpus, load_pairs, load_qrels, load_queries, load_sts
from embedexp.errors import ConfigError

FORMATS = ("beir", "pairs", "sts")


@dataclass
class TrainSet:
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    rows: list[tuple[str, ...]]
    labels: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def beir_pairs(root: str, split: str = "train", on_error: str = "raise", min_grade: int = 1) -> TrainSet:
    """(query, positive document) for every qrel of `split` with grade >= min_grade."""
    corpus = load_corpus(root, on_error)
    queries = load_queries(root, on_error)
    qrels = load_qrels(root, split, queries, corpus, on_error)
    rows = [
        (queries[qid], doc_text(corpus[did]))
        for qid, docs in qrels.items()
        for did, grade in docs.items()
        if grade >= min_grade
    ]
    return TrainSet(("anchor", "positive"), ("query", "document"), rows, info={"queries": len(qrels), "corpus": len(corpus)})


def pair_rows(path: str, on_error: str = "raise") -> TrainSet:
    rows = load_pairs(path, on_error)
    n_neg = len(rows[0]) - 2 if rows else 0
    columns = ("anchor", "positive", *(f"negative_{i + 1}" for i in range(n_neg)))
    return TrainSet(columns, ("query",) + ("document",) * (1 + n_neg), rows)


def sts_rows(path: str, on_error: str = "raise", max_score: float = 5.0) -> TrainSet:
    """(text_a, text_b) with label = score / max_score in [0, 1]."""
    data = load_sts(path, max_score=max_score, on_error=on_error)
    return TrainSet(
        ("text_a", "text_b"),
        ("document", "document"),
        [(a, b) for a, b, _ in data],
        labels=[s / max_score for _, _, s in data],
    )


def build_train_set(spec: dict) -> TrainSet:
    spec = dict(spec)
    fmt = spec.pop("format", None)
    on_error = spec.pop("on_error", "raise")
    if fmt == "beir":
        return beir_pairs(spec["root"], spec.get("split", "train"), on_error, int(spec.get("min_grade", 1)))
    if fmt == "pairs":
        return pair_rows(spec["path"], on_error)
    if fmt == "sts":
        return sts_rows(spec["path"], on_error, float(spec.get("max_score", 5.0)))
    raise ConfigError(f"data.train.format={fmt!r}; expected one of {', '.join(FORMATS)}")
