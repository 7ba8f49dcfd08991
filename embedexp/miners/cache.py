"""On-disk cache of mining results: `<cache_dir>/<key>.json.gz`, written atomically (temp file + rename).

A file that cannot be read, is not gzip/JSON, or does not carry the expected key and format version is
ignored with a warning (and overwritten by the next successful run).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os  # noqa: F401  (tests patch cache.os.replace to simulate a crash inside atomic_write)
from pathlib import Path
from typing import Any, Iterable

from embedexp.io import atomic_write

log = logging.getLogger("embedexp.miners")

# 2: the selection rule of issue 14 (unretrieved candidates, duplicate and anchor texts are never negatives;
#    cross-encoder rankings mark unretrieved first-stage candidates -inf): results of version 1 are not served
CACHE_VERSION = 2
REQUIRED = {"mined": ("negatives", "stats"), "candidates": ("indices", "scores", "pos_scores")}  # kind -> fields


def hash_json(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def data_fingerprint(train_set) -> str:
    """Hash of everything mining reads: the corpus (ids, texts, order), the rows' query ids/texts and
    positives (order), and the qrels."""
    h = hashlib.blake2b(digest_size=16)

    def feed(parts: Iterable[str]) -> None:
        for p in parts:
            b = p.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)

    feed(["corpus", str(len(train_set.corpus))])
    for did, text in train_set.corpus.items():
        feed((did, text))
    feed(["rows", str(len(train_set.rows))])
    for qid, row in zip(train_set.query_ids, train_set.rows):
        feed((qid, row[0], row[1]))
    feed(["qrels", json.dumps(train_set.qrels, sort_keys=True)])
    return h.hexdigest()


def folder_fingerprint(path: str | Path, extra: dict | None = None) -> str:
    """Hash of a model folder's files (names + bytes) and settings; keys cross-encoder results."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"{key}.json.gz"


def read_cache(cache_dir: str | Path, key: str, kind: str) -> dict | None:
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            obj = json.load(f)
        if isinstance(obj, dict) and obj.get("version") != CACHE_VERSION:
            raise ValueError(f"cache format version {obj.get('version')!r}, expected {CACHE_VERSION}")
        if not isinstance(obj, dict) or obj.get("key") != key or obj.get("kind") != kind:
            raise ValueError("unexpected content")
        missing = [k for k in REQUIRED.get(kind, ()) if k not in obj]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return obj
    except Exception as e:  # corrupt, truncated, or from another version: recompute
        log.warning(
            "mining cache %s is unreadable (%s); ignoring it",
            path,
            type(e).__name__ if not str(e) else str(e).splitlines()[0],
        )
        return None


def write_cache(cache_dir: str | Path, key: str, kind: str, payload: dict) -> Path:
    obj = {"version": CACHE_VERSION, "key": key, "kind": kind, **payload}

    def write(raw) -> None:
        with gzip.open(raw, "wt", encoding="utf-8", compresslevel=5) as f:
            json.dump(obj, f)

    return atomic_write(cache_path(cache_dir, key), write, binary=True)
