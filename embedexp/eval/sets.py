"""Evaluation sets named in the config: retrieval (BEIR folder + split) and STS (tsv)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from embedexp.data.readers import doc_text, load_corpus, load_qrels, load_queries, load_sts, require_dir
from embedexp.errors import ConfigError

SET_TYPES = ("retrieval", "sts")


@dataclass
class RetrievalSet:
    name: str
    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    qrels: dict[str, dict[str, int]]
    fingerprint: str


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


def load_eval_set(name: str, spec: dict):
    kind = spec.get("type")
    on_error = spec.get("on_error", "raise")
    if kind == "retrieval":
        if not spec.get("root"):
            raise ConfigError(f"eval.sets.{name}.root is missing; expected a BEIR folder")
        root = require_dir(spec["root"], f"eval.sets.{name}")
        split = spec.get("split", "test")
        corpus = load_corpus(root, on_error)
        queries = load_queries(root, on_error)
        qrels = load_qrels(root, split, queries, corpus, on_error)
        files = sorted(p for p in root.glob("corpus.jsonl*")) + sorted(root.glob("queries.jsonl*")) + [root / "qrels" / f"{split}.tsv"]
        qids = list(qrels)
        return RetrievalSet(
            name,
            qids,
            [queries[q] for q in qids],
            list(corpus),
            [doc_text(d) for d in corpus.values()],
            qrels,
            _hash_files(files, f"retrieval:{split}"),
        )
    if kind == "sts":
        if not spec.get("path"):
            raise ConfigError(f"eval.sets.{name}.path is missing; expected an STS tsv file")
        rows = load_sts(spec["path"], float(spec.get("max_score", 5.0)), on_error)
        return STSSet(
            name,
            [a for a, _, _ in rows],
            [b for _, b, _ in rows],
            [s for _, _, s in rows],
            _hash_files([Path(spec["path"]).expanduser()], "sts"),
        )
    raise ConfigError(f"eval.sets.{name}.type={kind!r}; expected one of {', '.join(SET_TYPES)}")


def load_eval_sets(specs: dict) -> list:
    return [load_eval_set(name, dict(spec)) for name, spec in (specs or {}).items()]
