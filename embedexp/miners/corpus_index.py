"""Corpus bookkeeping for mining without per-document Python objects: duplicate texts and the few ids/texts looked up.

A dict from every document id to its index and another from every text to its first index peaked at ~116 bytes
per document of Python objects (dict slots, int objects; traced on 50,000 documents), ~110 MB at 10^6. Here the
whole-corpus part is numpy (`canonical_index`: 8-byte hashes, a stable argsort; ~53 bytes per document at the peak)
and the dicts cover only the ids and texts the training rows look up (`corpus_lookup`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

_hash = hash  # a module name, so a test can force collisions


def canonical_index(docs: Sequence[str]) -> np.ndarray:
    """canon[i] = the first index j with docs[j] == docs[i] (i itself for a text's first occurrence).

    Args:
        docs: n texts.

    Returns:
        (n,) int64. Texts are grouped by Python's `hash` (cached on str objects), with a stable argsort so each group's
        first member is its smallest index; a group whose texts are not all equal (a 64-bit hash collision) is split
        exactly with a dict over that group only. Memory: a few int64 arrays of length n.
    """
    n = len(docs)
    if n == 0:
        return np.empty(0, np.int64)
    h = np.fromiter((_hash(t) for t in docs), dtype=np.int64, count=n)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    del h
    starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]])
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    canon = np.empty(n, np.int64)
    canon[order] = order[starts][group]
    bad = [i for i in np.flatnonzero(canon != np.arange(n)).tolist() if docs[i] != docs[canon[i]]]
    if bad:  # hash collisions: split those hash groups exactly
        pos = np.empty(n, np.int64)
        pos[order] = np.arange(n)
        ends = np.r_[starts[1:], n]
        for g in sorted({int(group[pos[i]]) for i in bad}):
            first: dict[str, int] = {}
            for j in order[starts[g] : ends[g]].tolist():  # ascending index within a group (stable sort)
                canon[j] = first.setdefault(docs[j], j)
    return canon


def corpus_lookup(
    doc_ids: Sequence[str], docs: Sequence[str], wanted_ids: Iterable[str], wanted_texts: Iterable[str]
) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
    """(canon, id_to_idx, text_to_idx) for mining: see `canonical_index`; id_to_idx maps each wanted id that is in
    doc_ids to its index; text_to_idx maps each wanted text that is a document to its first index."""
    ids, texts = set(wanted_ids), set(wanted_texts)
    id_to_idx = {d: i for i, d in enumerate(doc_ids) if d in ids}
    text_to_idx: dict[str, int] = {}
    for i, t in enumerate(docs):
        if t in texts:
            text_to_idx.setdefault(t, i)
    return canonical_index(docs), id_to_idx, text_to_idx
