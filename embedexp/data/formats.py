"""Which table columns play which role: an explicit `data.train.columns` mapping, or a community convention.

Roles: `anchor` (the query), `positive` (one text column, a list column, or several columns), `negatives`
(a list column or several text columns), `label` (a number: pair losses), `pos_scores`/`neg_scores`
(teacher scores aligned with the positives/negatives), `prompt` (a per-row instruction put before the anchor).

Conventions recognised by column names when no mapping is given (first match wins):

- tevatron: `query`, `positive_passages`, `negative_passages` (lists of {docid, title, text});
- FlagEmbedding: `query`, `pos: [...]`, `neg: [...]`, optional `pos_scores`, `neg_scores`, `prompt`;
- sentence-transformers: a `label` or `score` column is the label, the other columns are the inputs in order
  (anchor, positive, negative_1, ...; with a label exactly two inputs, text_a and text_b). embedexp's own
  pairs jsonl (`anchor`/`query`, `positive`, `negatives: [...]`) is this case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedexp.errors import ConfigError, DataError

ROLES = ("anchor", "positive", "negatives", "label", "pos_scores", "neg_scores", "prompt")
LABEL_NAMES = ("label", "score")
POSITIVES = ("first", "sample", "all")  # data.train.positives: one per query per epoch, or one row per positive
SHORT_NEGATIVES = ("repeat", "fail")  # data.train.short_negatives: rows with fewer than negatives_per_row


@dataclass
class Mapping:
    """Column names per role; `positive`/`negatives` may hold several columns (each a text or a list)."""

    convention: str
    anchor: str
    positive: list[str]
    negatives: list[str] = field(default_factory=list)
    label: str | None = None
    pos_scores: str | None = None
    neg_scores: str | None = None
    prompt: str | None = None

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


def _names(value, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"data.train.columns.{key}={value!r}; expected a column name or a list of column names")


def resolve(columns: list[str], mapping: dict | None, where: str) -> Mapping:
    """The role of each column, from `mapping` (data.train.columns) or a recognised convention.

    Raises:
        ConfigError: an unknown role in the mapping, or a mapping without anchor/positive.
        DataError: a mapped column the table lacks, or a table no convention fits (naming the file and
            the columns it has).
    """
    have = ", ".join(columns)
    if mapping:
        unknown = sorted(set(mapping) - set(ROLES))
        if unknown:
            raise ConfigError(f"data.train.columns.{unknown[0]}: unknown role; expected some of {', '.join(ROLES)}")
        for role in ("anchor", "positive"):
            if not mapping.get(role):
                raise ConfigError(f"data.train.columns needs {role} (the table has columns: {have})")
        for role, value in mapping.items():
            for name in _names(value, role):
                if name not in columns:
                    raise DataError(f"{where}: no column {name!r} (columns: {have}); set data.train.columns.{role}")
        single = {}
        for role in ("anchor", "label", "pos_scores", "neg_scores", "prompt"):
            names = _names(mapping.get(role), role)
            if len(names) > 1:
                raise ConfigError(f"data.train.columns.{role}={names}; expected one column name")
            single[role] = names[0] if names else None
        return Mapping(
            "columns",
            single["anchor"],
            _names(mapping["positive"], "positive"),
            _names(mapping.get("negatives"), "negatives"),
            single["label"],
            single["pos_scores"],
            single["neg_scores"],
            single["prompt"],
        )
    cols = set(columns)
    if {"query", "positive_passages"} <= cols:
        return Mapping(
            "tevatron",
            "query",
            ["positive_passages"],
            ["negative_passages"] if "negative_passages" in cols else [],
        )
    if {"query", "pos"} <= cols:
        return Mapping(
            "flagembedding",
            "query",
            ["pos"],
            ["neg"] if "neg" in cols else [],
            pos_scores="pos_scores" if "pos_scores" in cols else None,
            neg_scores="neg_scores" if "neg_scores" in cols else None,
            prompt="prompt" if "prompt" in cols else None,
        )
    label = next((c for c in columns if c in LABEL_NAMES), None)
    inputs = [c for c in columns if c != label]
    if len(inputs) < 2 or (label is not None and len(inputs) != 2):
        need = "exactly 2 text columns besides the label" if label else "at least 2 text columns"
        raise DataError(
            f"{where}: cannot tell which columns are the texts (columns: {have}); expected {need} "
            "(sentence-transformers order), or set data.train.columns.anchor and data.train.columns.positive"
        )
    return Mapping("sentence-transformers", inputs[0], [inputs[1]], inputs[2:], label)
