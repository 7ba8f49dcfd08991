"""Evaluation sets named in the config: retrieval (BEIR folder + split, or held-out pairs) and STS (tsv).

`type: pairs` builds a retrieval set from (anchor, positive[, negatives...]) rows the way
sentence-transformers' InformationRetrievalEvaluator is usually fed: the queries are the distinct anchors,
the corpus is every distinct positive and negative text, and each anchor's positives are its relevant
documents (grade 1). That is how a user's own pairs data gets domain metrics without a BEIR folder.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from embedexp.data.readers import doc_text, load_corpus, load_pairs, load_qrels, load_queries, load_sts, require_dir
from embedexp.errors import ConfigError

SET_TYPES = ("retrieval", "pairs", "sts")
log = logging.getLogger(__name__)


@dataclass
class RetrievalSet:
    """A BEIR split in memory: queries (those with qrels), the corpus (title + " " + text) and graded qrels.

    ignore_identical_ids: a document whose id equals the query id is never retrieved (ArguAna-style data
    where every query is also a corpus document); read by our metrics and by the mteb adapter alike.
    """

    name: str
    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    qrels: dict[str, dict[str, int]]
    fingerprint: str
    ignore_identical_ids: bool = False


@dataclass
class STSSet:
    name: str
    text_a: list[str]
    text_b: list[str]
    scores: list[float]
    fingerprint: str


def _hash_files(paths: list[Path], extra: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(extra.encode())
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def ignore_identical_ids_setting(spec: dict, key: str) -> bool:
    """The `ignore_identical_ids` of an eval-set spec (default False); anything but a boolean is a ConfigError."""
    value = spec.get("ignore_identical_ids", False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.ignore_identical_ids={value!r}; expected true or false")
    return value


def warn_identical_ids(name: str, qrels: dict[str, dict[str, int]]) -> None:
    """Warn when ignore_identical_ids drops documents the qrels judge relevant (they can never be retrieved)."""
    from embedexp.eval.metrics import identical_id_judgements

    lost = identical_id_judgements(qrels)
    if lost:
        log.warning(
            "eval set %s: ignore_identical_ids=true drops %d judged-relevant document%s whose id equals "
            "the query id (first: query %r), so those queries cannot reach a perfect score; set "
            "ignore_identical_ids: false if query and document ids are unrelated",
            name,
            len(lost),
            "" if len(lost) == 1 else "s",
            lost[0],
        )


def load_eval_set(name: str, spec: dict, key: str | None = None):
    """One eval set from its config spec: a RetrievalSet (`type: retrieval`, `root`, `split`,
    `ignore_identical_ids`) or an STSSet (`type: sts`, `path`, `max_score`).

    Raises ConfigError (key named as `key`, default `eval.sets.<name>`) or DataError (file and line).
    """
    key = key or f"eval.sets.{name}"
    kind = spec.get("type")
    on_error = spec.get("on_error", "raise")
    if kind == "retrieval":
        if not spec.get("root"):
            raise ConfigError(f"{key}.root is missing; expected a BEIR folder")
        ignore_identical = ignore_identical_ids_setting(spec, key)
        root = require_dir(spec["root"], f"eval.sets.{name}")
        split = spec.get("split", "test")
        corpus = load_corpus(root, on_error)
        queries = load_queries(root, on_error)
        qrels = load_qrels(root, split, queries, corpus, on_error)
        files = (
            sorted(p for p in root.glob("corpus.jsonl*"))
            + sorted(root.glob("queries.jsonl*"))
            + [root / "qrels" / f"{split}.tsv"]
        )
        qids = list(qrels)
        if ignore_identical:
            warn_identical_ids(name, qrels)
        return RetrievalSet(
            name,
            qids,
            [queries[q] for q in qids],
            list(corpus),
            [doc_text(d) for d in corpus.values()],
            qrels,
            _hash_files(files, f"retrieval:{split}" + (":ignore_identical_ids" if ignore_identical else "")),
            ignore_identical,
        )
    if kind == "pairs":
        if not spec.get("path"):
            raise ConfigError(f"{key}.path is missing; expected a pairs jsonl file (anchor, positive[, negatives])")
        path = Path(spec["path"]).expanduser()
        return pairs_retrieval_set(name, load_pairs(path, on_error), _hash_files([path], "pairs"))
    if kind == "sts":
        if not spec.get("path"):
            raise ConfigError(f"{key}.path is missing; expected an STS tsv file")
        rows = load_sts(spec["path"], float(spec.get("max_score", 5.0)), on_error)
        return STSSet(
            name,
            [a for a, _, _ in rows],
            [b for _, b, _ in rows],
            [s for _, _, s in rows],
            _hash_files([Path(spec["path"]).expanduser()], "sts"),
        )
    raise ConfigError(f"{key}.type={kind!r}; expected one of {', '.join(SET_TYPES)}")


def pairs_retrieval_set(name: str, rows, fingerprint: str, extra_docs=()) -> RetrievalSet:
    """A retrieval set from (anchor, positive, *negatives) rows: distinct anchors -> queries `q<i>`, distinct
    positive/negative texts (then `extra_docs`) -> documents `d<i>` (ids by first appearance), qrels anchor -> its
    positives (grade 1).

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError(f"eval set {name}: no pairs to build a retrieval set from")
    query_ids: dict[str, str] = {}
    doc_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for anchor, positive, *negatives in rows:
        qid = query_ids.setdefault(anchor, f"q{len(query_ids)}")
        for text in (positive, *negatives):
            doc_ids.setdefault(text, f"d{len(doc_ids)}")
        qrels.setdefault(qid, {})[doc_ids[positive]] = 1
    for text in extra_docs:  # distractors: e.g. every document of the training data
        doc_ids.setdefault(text, f"d{len(doc_ids)}")
    return RetrievalSet(
        name, list(query_ids.values()), list(query_ids), list(doc_ids.values()), list(doc_ids), qrels, fingerprint
    )


def load_eval_sets(specs: dict | list) -> list:
    """Every eval set of `eval.sets` (name -> spec), in config order; a list of loaded sets is taken as it is."""
    if isinstance(specs, list):
        return list(specs)
    return [load_eval_set(name, dict(spec)) for name, spec in (specs or {}).items()]
