"""Duplicate-safe batches: text hashes, the no-duplicates batch plan and the known positives of each anchor.

In-batch-negative losses (InfoNCE, GIST) treat every other row's texts as negatives of an anchor. A text that
occurs twice in one batch (two questions sharing an answer, a repeated query) turns a positive into a
negative: the two rows train against each other. Two complementary defences live here:

* `plan_no_duplicates`: batches (of one process, or the global batch of all DDP ranks together) in which no
  text occurs twice in any column; a row that would repeat a text is deferred to a later batch of the same
  epoch. The idea is sentence-transformers' ``NoDuplicatesBatchSampler``; this plan differs in keeping the
  number of batches per epoch fixed (``ceil(N / C)``, or ``N // C`` with drop_last), so Lightning's loop and LR
  schedule stay exact: when the last batch cannot be filled, a deferred row is swapped with a row of a recent
  full batch where both fit. Only when no swap exists (a text in more rows than there are batches) does a
  batch keep a repeated text; those rows are counted (`NoDuplicatePlan.forced`) and logged.
* `KnownPositives`: for every row, the hashes of texts known to be positives of its anchor (its own positive,
  the positives of every row with the same anchor text, and the documents judged relevant to its query in the
  qrels). The loss masks those candidates out of the softmax (embedexp.losses.known_positives).

Texts are compared by `text_hash`: a 63-bit xxh3 hash of the NFC-normalised text with runs of white space
collapsed (case is kept). Hashes are stored as int64 numpy arrays, one row per training row, so a million
rows cost 8 bytes per column each and no per-row Python objects are kept. Table-backed sets
(embedexp.data.table_rows) hash straight from their Arrow columns (`hash_strings`: normalised with Arrow
compute kernels, one xxh3 call per text on the Arrow buffer, a record batch at a time) and cache the result
by their fingerprint; `row_hashes` falls back to reading rows one by one for list-backed sets.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from embedexp.data import mapped_pages
from embedexp.data.mapped_pages import MappedPages, Releaser

log = logging.getLogger(__name__)

_MASK63 = (1 << 63) - 1
PAD = 0  # never a hash: marks padding in (B, K) known-positive id tensors


def normalise(text: str) -> str:
    """The form texts are compared in: NFC, white space runs collapsed to one space, ends stripped."""
    return " ".join((text if text.isascii() else unicodedata.normalize("NFC", text)).split())


def text_hash(text: str) -> int:
    """A 63-bit hash (1 .. 2**63 - 1, so it fits int64 and is never PAD) of `normalise(text)`."""
    h = xxhash.xxh3_64_intdigest(normalise(text).encode("utf-8", "surrogatepass")) & _MASK63
    return h or 1


# Python's str.split() white space (every c with c.isspace()) other than the space, as an RE2 class for Arrow's
# regex kernels: such a character becomes a space, then runs of spaces become one (two passes that only match
# where a text is not already normalised: replacing every single space costs ~5x more)
OTHER_WHITESPACE_RE = (
    r"[\t\n\x0b\x0c\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
)
HASH_VERSION = 1  # part of cached hashes' keys: bump when `normalise` / `text_hash` change
BATCH = 1 << 16  # texts normalised and hashed per step of `hash_strings`


def hash_strings(texts: pa.Array | pa.ChunkedArray, batch: int = BATCH, release: bool = True) -> np.ndarray:
    """(len(texts),) int64: `text_hash` of every string of an Arrow string array; PAD (0) where null.

    Equal to `[text_hash(t) for t in texts.to_pylist()]` without making Python strings: each record batch of
    `batch` texts is NFC-normalised (`utf8_normalize`), white space runs (Python's `str.isspace` set) replaced
    by one space and the ends trimmed with Arrow kernels (about 1.3 CPU s per million short texts here, most of it
    the xxh3 calls), then xxh3 runs on each text's UTF-8 bytes in the
    Arrow buffer. Memory: the output plus one normalised batch; with `release` and a memory-mapped column of at
    least `mapped_pages.RELEASE_EVERY` bytes, the pages read are given back every that many bytes
    (`embedexp.data.mapped_pages`), so the pass does not leave the column resident.
    """
    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    pages = Releaser(MappedPages.of(chunks)) if release and texts.nbytes >= mapped_pages.RELEASE_EVERY else None
    out = np.empty(len(texts), dtype=np.uint64)
    null = np.zeros(len(texts), dtype=bool)
    pos = 0
    digest = xxhash.xxh3_64_intdigest
    for chunk in chunks:
        for lo in range(0, len(chunk), batch):
            part = chunk.slice(lo, batch)
            if not pa.types.is_large_string(part.type):
                part = part.cast(pa.large_string())
            norm = pc.replace_substring_regex(pc.utf8_normalize(part, "NFC"), OTHER_WHITESPACE_RE, " ")
            norm = pc.utf8_trim(pc.replace_substring_regex(norm, "  +", " "), " ")
            n = len(norm)
            _, off_buf, data_buf = norm.buffers()
            offsets = np.frombuffer(off_buf, dtype=np.int64)[norm.offset : norm.offset + n + 1].tolist()
            data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
            out[pos : pos + n] = np.fromiter(
                (digest(data[a:b]) for a, b in zip(offsets[:-1], offsets[1:])), dtype=np.uint64, count=n
            )
            if norm.null_count:
                null[pos : pos + n] = np.asarray(norm.is_null(), dtype=bool)
            pos += n
            if pages is not None:
                pages.read(part.nbytes)
    if pages is not None:
        pages.close()
    out &= np.uint64(_MASK63)  # in place: no second (N,) array at the peak
    h = out.view(np.int64)
    h[h == 0] = 1  # text_hash never returns 0 (PAD)
    h[null] = PAD
    return h


def row_hashes(train_set: Any, epoch: int | None = None) -> np.ndarray:
    """(N, n_columns) int64: `text_hash` of every text of every row (`train_set.get(i)`).

    `epoch`: for train sets that re-draw texts per epoch (`set_epoch`), the epoch whose texts are hashed.
    Table-backed sets (rows with a `row_hashes(epoch)` method and no per-row transform) compute them from
    their Arrow columns (vectorised, cached by their fingerprint); other sets read row by row.
    """
    if epoch is not None:
        ensure_epoch(train_set, epoch)
    rows = getattr(train_set, "rows", train_set)
    if hasattr(rows, "row_hashes") and getattr(train_set, "transform", None) is None:
        return rows.row_hashes(epoch)
    n, width = len(train_set), len(train_set.columns)
    out = np.empty((n, width), dtype=np.int64)
    for i in range(n):
        row = train_set.get(i)
        for c in range(min(width, len(row))):
            out[i, c] = text_hash(row[c])
        for c in range(len(row), width):  # a shorter row (fewer negatives): padding, never a conflict
            out[i, c] = PAD
    return out


def ensure_epoch(train_set: Any, epoch: int) -> None:
    """Call `train_set.set_epoch(epoch)` (re-draws sampled negatives) unless it is already at that epoch."""
    set_epoch = getattr(train_set, "set_epoch", None)
    if set_epoch is None or getattr(train_set, "_embedexp_epoch", None) == epoch:
        return
    set_epoch(epoch)
    try:
        train_set._embedexp_epoch = epoch
    except AttributeError:  # an object without a __dict__: set_epoch runs every time
        pass


def batch_sizes(n: int, batch: int, world: int, drop_last: bool) -> list[int]:
    """Sizes of the global batches (all ranks together) of one epoch of `n` rows.

    A global batch holds `batch * world` rows; the last one (drop_last=False) holds the remainder, rounded down
    to a multiple of `world` so every rank gets equally many rows (the cross-rank gather needs that).
    """
    full = batch * world
    if drop_last:
        return [full] * (n // full)
    sizes = [full] * (n // full)
    rest = (n - len(sizes) * full) // world * world
    if rest:
        sizes.append(rest)
    return sizes


@dataclass
class NoDuplicatePlan:
    """One epoch's batches (arrays of row indices) and how many rows had to repeat a text (0 almost always)."""

    batches: list[np.ndarray]
    forced: int


def shared_rows(hashes: np.ndarray) -> np.ndarray:
    """(N,) bool: rows holding a hash that occurs more than once in `hashes` (in any row or column).

    One sorted copy of the hashes finds the repeated values; rows are then looked up column by column, so the
    scratch is about 2 x 8 bytes per hash (no `np.unique` inverse/counts arrays).
    """
    flat = np.sort(hashes, axis=None)
    repeated = flat[1:][flat[1:] == flat[:-1]]
    del flat
    repeated = np.unique(repeated[repeated != PAD])
    out = np.zeros(len(hashes), dtype=bool)
    if len(repeated) == 0:
        return out
    for c in range(hashes.shape[1]):
        col = hashes[:, c]
        at = np.searchsorted(repeated, col)
        at[at == len(repeated)] = 0
        out |= repeated[at] == col
    return out


def plan_no_duplicates(
    hashes: np.ndarray,
    order: Sequence[int] | np.ndarray,
    sizes: Sequence[int],
    swap_window: int = 64,
    scan_limit: int | None = None,
) -> NoDuplicatePlan:
    """Fill batches of `sizes` from the rows in `order` so that no hash occurs twice in a batch.

    Args:
        hashes: (N, c) int64 row hashes (`row_hashes`); PAD entries are ignored.
        order: the epoch's row order (a seeded permutation); rows are taken in this order, a row that conflicts
            with the batch being filled waits in a queue and is tried first for the next batches.
        sizes: the batch sizes (`batch_sizes`); sum(sizes) <= N; rows left over are not used this epoch
            (drop_last).
        swap_window: how many recent batches a stuck row may be swapped into when the tail cannot be filled.
        scan_limit: how many waiting rows are tried per batch before new rows (default 4 x the batch size).
    Returns:
        NoDuplicatePlan; `batches[k]` has exactly `sizes[k]` rows, every row at most once.
    """
    order = np.asarray(order, dtype=np.int64)
    risky = shared_rows(hashes)  # rows with a text that occurs elsewhere too; all others always fit
    if not risky.any():  # no text occurs twice anywhere: the batches are consecutive slices of `order`
        bounds = np.cumsum([0, *sizes])
        # views of one private copy of `order` (one (N,) array instead of a small array per batch)
        order = order.copy()
        return NoDuplicatePlan([order[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())], 0)

    def keys(r: int) -> set[int]:
        return {h for h in hashes[r].tolist() if h != PAD} if risky[r] else set()

    risky_at = np.flatnonzero(risky[order]).tolist()  # positions in `order` of the rows that need a check
    next_risky = 0
    waiting: deque[int] = deque()
    recent: deque[tuple[list[int], set[int]]] = deque(maxlen=max(swap_window, 0) or None)
    batches: list[list[int]] = []  # lists until the end: a swap edits a recent batch in place
    forced, pos, n = 0, 0, len(order)
    for size in sizes:
        batch: list[int] = []
        seen: set[int] = set()
        if waiting:  # rows deferred by earlier batches go first
            limit = scan_limit or 4 * size
            kept: deque[int] = deque()
            tried = 0
            while waiting and len(batch) < size and tried < limit:
                r = waiting.popleft()
                tried += 1
                k = keys(r)
                if seen.isdisjoint(k):
                    batch.append(r)
                    seen |= k
                else:
                    kept.append(r)
            kept.extend(waiting)
            waiting = kept
        while len(batch) < size and pos < n:
            while next_risky < len(risky_at) and risky_at[next_risky] < pos:
                next_risky += 1
            stop = min(pos + size - len(batch), risky_at[next_risky] if next_risky < len(risky_at) else n)
            if stop > pos:  # rows whose texts occur nowhere else: no check needed
                batch.extend(order[pos:stop].tolist())
                pos = stop
                continue
            r = int(order[pos])
            pos += 1
            k = keys(r)
            if seen.isdisjoint(k):
                batch.append(r)
                seen |= k
            else:
                waiting.append(r)
        if len(batch) < size:  # no new rows left and every waiting row conflicts: the tail
            forced += _fill_tail(batch, seen, size, waiting, recent, keys)
        batches.append(batch)
        if swap_window:
            recent.append((batch, seen))
    if forced:
        log.warning(
            "no-duplicates batches: %d row(s) could not be placed without repeating a text in their batch (a text "
            "occurs in more rows than an epoch has batches); known-positive masking still keeps them out of the "
            "negatives",
            forced,
        )
    return NoDuplicatePlan([np.asarray(b, dtype=np.int64) for b in batches], forced)


def _fill_tail(batch, seen, size, waiting, recent, keys) -> int:
    """Fill `batch` from conflicting waiting rows by swapping each with a fitting row of a recent batch.

    A waiting row r goes into a recent batch b in place of a row s of b when r conflicts with nothing else in
    b and s conflicts with nothing in `batch`. Returns how many rows had to be added with a repeated text.
    """
    stuck: deque[int] = deque()
    while waiting and len(batch) < size:
        r = waiting.popleft()
        kr = keys(r)
        if seen.isdisjoint(kr):
            batch.append(r)
            seen |= kr
            continue
        placed = False
        for other, other_seen in reversed(recent):
            for j, s in enumerate(other):
                ks = keys(s)
                if not seen.isdisjoint(ks):
                    continue
                if (other_seen - ks).isdisjoint(kr):
                    other[j] = r
                    other_seen -= ks
                    other_seen |= kr
                    batch.append(s)
                    seen |= ks
                    placed = True
                    break
            if placed:
                break
        if not placed:
            stuck.append(r)
    forced = 0
    while stuck and len(batch) < size:  # impossible to avoid: keep the row (its text repeats in this batch)
        r = stuck.popleft()
        batch.append(r)
        seen |= keys(r)
        forced += 1
    waiting.extendleft(reversed(stuck))
    return forced


class KnownPositives:
    """Per row, the hashes of the texts known to be positives of its anchor, in CSR form (numpy arrays).

    A row's known positives: the positive (column 1) of every row whose anchor (column 0) has the same hash,
    and, for retrieval data with query ids and qrels, every corpus document judged relevant (grade > 0) to the
    row's query. `lookup(i)` returns them as an int64 array (the row's own positive included).
    """

    def __init__(self, group: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> None:
        self.group, self.offsets, self.values = group, offsets, values

    @classmethod
    def build(cls, hashes: np.ndarray, train_set: Any = None) -> "KnownPositives":
        """From (N, c >= 2) row hashes; `train_set` supplies query_ids, qrels and corpus when it has them."""
        anchors = hashes[:, 0]
        uniq, group = np.unique(anchors, return_inverse=True)
        group = group.astype(np.int64).reshape(-1)
        pairs_g = [group]
        pairs_h = [hashes[:, 1]]
        qids = getattr(train_set, "query_ids", None) if train_set is not None else None
        qrels = getattr(train_set, "qrels", None) if train_set is not None else None
        corpus = getattr(train_set, "corpus", None) if train_set is not None else None
        if qids is not None and qrels and corpus:
            first: dict[str, int] = {}
            for i, q in enumerate(qids):
                if q is not None and q not in first:
                    first[q] = int(group[i])
            doc_hash: dict[str, int] = {}
            extra_g, extra_h = [], []
            for q, g in first.items():
                for did, grade in (qrels.get(q) or {}).items():
                    if grade > 0 and did in corpus:
                        if did not in doc_hash:
                            doc_hash[did] = text_hash(corpus[did])
                        extra_g.append(g)
                        extra_h.append(doc_hash[did])
            if extra_g:
                pairs_g.append(np.asarray(extra_g, dtype=np.int64))
                pairs_h.append(np.asarray(extra_h, dtype=np.int64))
        g = np.concatenate(pairs_g)
        h = np.concatenate(pairs_h)
        keep = h != PAD
        both = np.unique(np.stack([g[keep], h[keep]], axis=1), axis=0)  # sorted by group, then hash
        offsets = np.zeros(len(uniq) + 1, dtype=np.int64)
        np.add.at(offsets, both[:, 0] + 1, 1)
        return cls(group, np.cumsum(offsets), both[:, 1].copy())

    def lookup(self, i: int) -> np.ndarray:
        g = self.group[i]
        return self.values[self.offsets[g] : self.offsets[g + 1]]
