"""Training rows read lazily from an Arrow table: variable positives/negatives, seeded per-epoch draws.

A `TableRows` is a read-only Sequence of row tuples `(anchor, positive, negative_1..negative_k)` (or
`(text_a, text_b)` for labelled pairs) over a memory-mapped Arrow table: nothing is materialised as
Python rows, so memory does not grow with the number of rows. Each row may hold any number of positives and
negatives; per epoch and row, one positive (`positives=first|sample`, or one set row per positive with
`all`) and `k = negatives_per_row` negatives are drawn with `random.Random` seeded by (seed, epoch, table
row, positive), so a resumed run draws the same texts. Fewer than k negatives: `short_negatives=repeat`
samples with replacement (FlagEmbedding's `train_group_size` behaviour: the list repeated, then sampled),
`fail` is a DataError naming the row. Teacher scores (`pos_scores`, `neg_scores`) follow the draw.

Every row is checked when the table opens (column types, missing/empty texts, score counts) with Arrow
compute kernels, chunk by chunk; a bad row is one line naming the file, the row (1-based, header not
counted) and the column.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedexp.data.formats import POSITIVES, SHORT_NEGATIVES, Mapping
from embedexp.data.mapped_pages import released_chunks
from embedexp.data.readers import SKIPPED, doc_text
from embedexp.errors import ConfigError, DataError

log = logging.getLogger("embedexp.data")


def _shape(t: pa.DataType) -> str | None:
    """'text' (string), 'list' (list of strings), 'passages' (list of {title, text} structs), else None."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        v = t.value_type
        if pa.types.is_string(v) or pa.types.is_large_string(v):
            return "list"
        if pa.types.is_struct(v) and v.get_field_index("text") >= 0:
            return "passages"
    return None


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _blank(arr: pa.Array) -> np.ndarray:
    """True where a string array holds null, '' or only whitespace."""
    if len(arr) == 0:
        return np.zeros(0, dtype=bool)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0)
    return np.asarray(pc.fill_null(pc.or_kleene(pc.is_null(arr), empty), True), dtype=bool)


class _Checker:
    """Collects the first problem of each check and a per-row bad mask (for on_error=skip)."""

    def __init__(self, n: int, where: str) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.first: tuple[int, str] | None = None
        self.where = where

    def flag(self, rows: np.ndarray, msg) -> None:
        """rows: indices of bad rows; msg(row) -> the description of the first one."""
        if len(rows) == 0:
            return
        self.bad[rows] = True
        r = int(rows.min())
        if self.first is None or r < self.first[0]:
            self.first = (r, msg(r))


class TableRows(Sequence):
    """Rows of a training table, drawn per epoch; see the module docstring.

    `cache_dir` (data.train.cache_dir, datasets' Arrow cache): where `row_hashes` keeps the text hashes of the
    no-duplicates sampler (a folder `embedexp_row_hashes` in it); None: kept in memory only.

    Raises (on construction):
        DataError: a column of the wrong type, or (on_error=raise) a row with a missing/empty text, no
            positive, fewer negatives than k with short_negatives=fail, or scores not matching the texts.
        ConfigError: an unknown `positives`/`short_negatives` value, or a labelled table that is not pairs.
    """

    def __init__(
        self,
        ds,
        mapping: Mapping,
        where: str,
        files_fingerprint: str,
        negatives_per_row: int | None = None,
        short_negatives: str = "repeat",
        positives: str = "first",
        seed: int = 0,
        on_error: str = "raise",
        cache_dir: str | None = None,
    ) -> None:
        if positives not in POSITIVES:
            raise ConfigError(f"data.train.positives={positives!r}; expected one of {', '.join(POSITIVES)}")
        if short_negatives not in SHORT_NEGATIVES:
            raise ConfigError(
                f"data.train.short_negatives={short_negatives!r}; expected one of {', '.join(SHORT_NEGATIVES)}"
            )
        if getattr(ds, "_indices", None) is not None:
            ds = ds.flatten_indices()
        self.table: pa.Table = ds.data.table if hasattr(ds.data, "table") else ds.data
        self.mapping, self.where, self.seed, self.epoch = mapping, where, int(seed), 0
        self.positives, self.short_negatives = positives, short_negatives
        self._files_fp = files_fingerprint
        n = self.table.num_rows
        if n == 0:
            raise DataError(f"{where}: no rows (empty table)")
        self.shapes: dict[str, str] = {}
        check = _Checker(n, where)
        self._check_texts(mapping.anchor, check, allow_lists=False)
        if mapping.prompt:
            t = self.table.schema.field(mapping.prompt).type
            if _shape(t) != "text":
                raise DataError(f"{where}: column {mapping.prompt!r} holds {t} values; expected text (the prompt)")
            self.shapes[mapping.prompt] = "prompt"
        self.n_pos = self._count(mapping.positive, check, "positive")
        self.n_neg = self._count(mapping.negatives, check, "negatives") if mapping.negatives else np.zeros(n, np.int64)
        check.flag(np.flatnonzero(self.n_pos == 0), lambda r: f"row {r + 1}: no positive text in {mapping.positive}")
        self.labels_all: np.ndarray | None = None
        if mapping.label:
            self._check_label(mapping.label, check)
            if mapping.negatives or any(self.shapes[c] != "text" for c in mapping.positive):
                raise ConfigError(
                    f"data.train.columns.label={mapping.label!r}: a labelled table is pairs (one anchor and one "
                    "positive text column, no negatives); drop the label mapping or the list/negative columns"
                )
        for key, counts, cols in (
            ("pos_scores", self.n_pos, mapping.positive),
            ("neg_scores", self.n_neg, mapping.negatives),
        ):
            if getattr(mapping, key):
                self._check_scores(getattr(mapping, key), counts, check, cols)
        keep = np.arange(n, dtype=np.int64)
        if check.first is not None:
            if on_error == "raise":
                raise DataError(f"{where}: {check.first[1]}")
            keep = np.flatnonzero(~check.bad).astype(np.int64)
            skipped = n - len(keep)
            SKIPPED[where] += skipped
            if len(keep) == 0:
                raise DataError(f"{where}: no valid rows ({skipped} bad rows skipped; first at {check.first[1]})")
            log.warning(
                "skipped %d bad row%s in %s: first at %s", skipped, "" if skipped == 1 else "s", where, check.first[1]
            )
        counts = self.n_neg[keep]
        if negatives_per_row is None:
            k = int(counts.min()) if len(counts) else 0
            if len(counts) and counts.max() != k:
                log.info(
                    "%s: rows have %d to %d negatives; using %d per row (set data.train.negatives_per_row)",
                    where,
                    k,
                    counts.max(),
                    k,
                )
        else:
            k = int(negatives_per_row)
            if k < 0:
                raise ConfigError(f"data.train.negatives_per_row={k}; expected an integer >= 0")
            short = keep[counts < k]
            if len(short) and (short_negatives == "fail" or (self.n_neg[short] == 0).any()):
                r = int(short[0]) if short_negatives == "fail" else int(short[self.n_neg[short] == 0][0])
                raise DataError(
                    f"{where}: row {r + 1} has {int(self.n_neg[r])} negatives in {mapping.negatives}; "
                    f"data.train.negatives_per_row={k} (short_negatives={short_negatives}"
                    + (
                        "; set data.train.short_negatives=repeat to sample with replacement)"
                        if short_negatives == "fail"
                        else "; a row with none cannot be repeated)"
                    )
                )
        self.k = k
        if positives == "all" and (self.n_pos[keep] > 1).any():
            reps = self.n_pos[keep]
            self.index = np.repeat(keep, reps)
            self.pos_index = np.concatenate([np.arange(c) for c in reps]).astype(np.int64) if len(reps) else reps
        else:
            self.index, self.pos_index = keep, None
        if mapping.label:
            self.columns: tuple[str, ...] = ("text_a", "text_b")
            self.kinds: tuple[str, ...] = ("document", "document")
        else:
            self.columns = ("anchor", "positive", *(f"negative_{i + 1}" for i in range(k)))
            self.kinds = ("query",) + ("document",) * (1 + k)
        self.has_scores = bool(mapping.pos_scores or mapping.neg_scores)
        self._cols = {c: self.table.column(c) for c in self.shapes}
        self._cache: tuple[tuple[int, int], tuple, tuple | None] | None = None
        self._hash_memo: tuple[str, np.ndarray] | None = None
        self.cache_dir = cache_dir
        self.skipped = n - len(keep)

    # ---------------------------------------------------------------- checks (vectorised, chunk by chunk)
    def _chunks(self, name: str):
        start = 0
        for chunk in released_chunks(self.table.column(name)):  # pages read are given back (mapped_pages)
            yield start, chunk
            start += len(chunk)

    def _check_texts(self, name: str, check: _Checker, allow_lists: bool = True, role: str = "anchor") -> str:
        t = self.table.schema.field(name).type
        shape = _shape(t)
        if shape is None and "json" in str(t):  # datasets' type for a JSON key whose rows hold different kinds
            self._mixed(name)
        if shape is None or (shape != "text" and not allow_lists):
            first = self.table.column(name)[0].as_py()
            want = "text" if not allow_lists else "text, a list of texts or a list of {title, text} passages"
            raise DataError(
                f"{self.where}: row 1: column {name!r} holds {t} values ({first!r}); expected {want} for "
                f"data.train.columns.{role}"
            )
        if self.mapping.convention == "flagembedding" and name in ("pos", "neg") and shape != "list":
            raise DataError(
                f"{self.where}: row 1: column {name!r} holds {t} values; expected a list of texts (FlagEmbedding)"
            )
        self.shapes[name] = shape
        for start, chunk in self._chunks(name):
            if shape == "text":
                check.flag(
                    start + np.flatnonzero(_blank(chunk)),
                    lambda r, n=name: f"row {r + 1}: column {n!r} is empty; expected non-empty text",
                )
                continue
            values = pc.list_flatten(chunk)
            parents = np.asarray(pc.list_parent_indices(chunk), dtype=np.int64)
            if shape == "passages":
                fields = {values.type.field(i).name for i in range(values.type.num_fields)}
                text = pc.struct_field(values, "text")
                blank = _blank(text)
                if "title" in fields:
                    blank &= _blank(pc.struct_field(values, "title"))
            else:
                blank = _blank(values)
            check.flag(
                start + parents[blank],
                lambda r, n=name: f"row {r + 1}: column {n!r} has an empty text; expected non-empty texts",
            )
        return shape

    def _mixed(self, name: str) -> None:
        """A column whose rows hold values of different JSON kinds: name the first row differing from row 1."""
        import json

        col = self.table.column(name)
        kinds = []
        for r in range(len(col)):
            v = col[r].as_py()
            kind = type(json.loads(v) if isinstance(v, str) else v).__name__
            kinds.append(kind)
            if kind != kinds[0]:
                raise DataError(
                    f"{self.where}: row {r + 1}: column {name!r} holds a {kind} ({v}), but row 1 holds a {kinds[0]}; "
                    "expected the same kind in every row (a text, or a list of texts)"
                )

    def _count(self, names: list[str], check: _Checker, role: str) -> np.ndarray:
        total = np.zeros(self.table.num_rows, dtype=np.int64)
        for name in names:
            shape = self._check_texts(name, check, role=role)
            if shape == "text":
                total += 1
            else:
                total += np.asarray(pc.fill_null(pc.list_value_length(self.table.column(name)), 0), dtype=np.int64)
        return total

    def _check_label(self, name: str, check: _Checker) -> None:
        col = self.table.column(name)
        if not _numeric(col.type):
            raise DataError(
                f"{self.where}: row 1: column {name!r} holds {col.type} values ({col[0].as_py()!r}); expected a number (the label)"
            )
        values = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        check.flag(
            np.flatnonzero(~np.isfinite(values)),
            lambda r: f"row {r + 1}: column {name!r} is missing or not a finite number",
        )
        self.labels_all = values

    def _check_scores(self, name: str, counts: np.ndarray, check: _Checker, texts: list[str]) -> None:
        col = self.table.column(name)
        t = col.type
        if _numeric(t):
            lengths = np.where(np.asarray(pc.is_null(col), dtype=bool), 0, 1)
        elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and _numeric(t.value_type):
            lengths = np.asarray(pc.fill_null(pc.list_value_length(col), 0), dtype=np.int64)
        else:
            raise DataError(f"{self.where}: row 1: column {name!r} holds {t} values; expected numbers (teacher scores)")
        bad = np.flatnonzero(lengths != counts)
        check.flag(
            bad,
            lambda r: (
                f"row {r + 1}: column {name!r} has {int(lengths[r])} scores for {int(counts[r])} texts in {texts}"
            ),
        )
        self.shapes[name] = "scores"

    # ---------------------------------------------------------------- rows
    def _texts(self, names: list[str], r: int) -> list[str]:
        out: list[str] = []
        for name in names:
            v = self._cols[name][r].as_py()
            shape = self.shapes[name]
            if shape == "text":
                out.append(v)
            elif shape == "list":
                out.extend(v or [])
            else:
                out.extend(doc_text(p) for p in v or [])
        return out

    def _scores(self, name: str | None, r: int) -> list[float] | None:
        if not name:
            return None
        v = self._cols[name][r].as_py()
        return [float(x) for x in (v if isinstance(v, list) else [v])]

    def _draw(self, i: int) -> tuple[tuple, tuple | None]:
        key = (i, self.epoch)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        r = int(self.index[i])
        m = self.mapping
        anchor = self._cols[m.anchor][r].as_py()
        if m.prompt:
            anchor = (self._cols[m.prompt][r].as_py() or "") + anchor
        pos = self._texts(m.positive, r)
        negs = self._texts(m.negatives, r) if m.negatives else []
        p, pick = self._pick(i)
        texts = (anchor, pos[p], *(negs[q] for q in pick))
        scores = None
        if self.has_scores:
            ps, ns = self._scores(m.pos_scores, r), self._scores(m.neg_scores, r)
            scores = (ps[p] if ps else math.nan, *((ns[q] for q in pick) if ns else (math.nan,) * self.k))
        self._cache = (key, texts, scores)
        return texts, scores

    def _pick(self, i: int) -> tuple[int, list[int]]:
        """Set row i's draw for the current epoch: (which of its positives, which of its negatives), seeded by
        (seed, epoch, table row, positive) so a resumed run and `row_hashes` draw the same."""
        r = int(self.index[i])
        j = int(self.pos_index[i]) if self.pos_index is not None else -1
        rng = random.Random(((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + r) * 131 + j + 1)
        p = j if j >= 0 else (0 if self.positives != "sample" else rng.randrange(int(self.n_pos[r])))
        n, k = int(self.n_neg[r]), self.k
        if n == k:
            pick = list(range(n))
        elif n > k:
            pick = rng.sample(range(n), k)
        else:
            pick = rng.sample(list(range(n)) * math.ceil(k / n), k)
        return p, pick

    def draws_vary(self) -> bool:
        """Whether the texts drawn for a row depend on the epoch (sampled positives or negatives)."""
        if self.positives == "sample" and (self.n_pos[self.index] > 1).any():
            return True
        return self.k > 0 and bool((self.n_neg[self.index] != self.k).any())

    # ---------------------------------------------------------------- text hashes (no-duplicates sampler)
    def row_hashes(self, epoch: int | None = None) -> np.ndarray:
        """(len(self), len(self.columns)) int64: `text_hash` of every drawn text (epoch `epoch`, default the
        current one), equal to hashing `self[i]` row by row but computed from the Arrow columns
        (`hash_strings`, a record batch at a time) without materialising rows. Kept in memory while the draw
        does not change and, with `cache_dir`, saved as .npy keyed by `fingerprint()`, the epoch (when draws
        vary) and HASH_VERSION, so a second run or another DDP rank loads it instead of hashing again."""
        from embedexp.data.no_duplicates import HASH_VERSION

        epoch = self.epoch if epoch is None else int(epoch)
        tag = f"e{epoch}" if self.draws_vary() else "static"
        if self._hash_memo is not None and self._hash_memo[0] == tag:
            return self._hash_memo[1]
        path = None
        if self.cache_dir:
            path = Path(self.cache_dir) / "embedexp_row_hashes" / f"{self.fingerprint()}-{tag}-v{HASH_VERSION}.npy"
            if path.is_file():
                try:
                    out = np.load(path)
                except (OSError, ValueError):  # a damaged file: hash again and overwrite it
                    out = None
                if out is not None and out.shape == (len(self), len(self.columns)):
                    self._hash_memo = (tag, out)
                    return out
        out = self._hash_rows(epoch)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
                np.save(tmp, out)
                os.replace(tmp, path)  # atomic: a concurrent rank reads a whole file or none
            except OSError as e:
                log.warning("could not cache the row hashes in %s (%s); continuing without", path.parent, e)
        self._hash_memo = (tag, out)
        return out

    def _column_hashes(self, name: str) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """(counts, starts, flat) over table rows: row t's texts of column `name` are
        flat[starts[t] : starts[t] + counts[t]]; text columns (one text per row): (None, None, flat)."""
        from embedexp.data.no_duplicates import hash_strings, text_hash

        col = self.table.column(name)
        n = self.table.num_rows
        shape = self.shapes[name]
        if shape == "text":
            return None, None, hash_strings(col)
        counts = np.asarray(pc.fill_null(pc.list_value_length(col), 0), dtype=np.int64)
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        parts = []
        for chunk in released_chunks(col):
            values = pc.list_flatten(chunk)  # null lists contribute nothing (their count is 0)
            if shape == "list":
                parts.append(hash_strings(values))
            else:  # {title, text} passages: doc_text joins them (rare format, per passage)
                parts.append(np.array([text_hash(doc_text(v)) for v in values.to_pylist()], dtype=np.int64))
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return counts, starts, flat

    def _hash_rows(self, epoch: int) -> np.ndarray:
        m = self.mapping
        rows = self.index
        n, k = len(rows), self.k
        out = np.empty((n, len(self.columns)), dtype=np.int64)
        if m.prompt:
            from embedexp.data.no_duplicates import hash_strings

            anchor = pc.binary_join_element_wise(
                pc.fill_null(self.table.column(m.prompt), ""), self._cols[m.anchor], ""
            )
            out[:, 0] = hash_strings(anchor)[rows]
        else:
            out[:, 0] = self._column_hashes(m.anchor)[2][rows]
        if self.draws_vary():  # the seeded per-row draw (as `_draw`), on counts only: no texts are read
            saved = self.epoch
            self.epoch = epoch
            try:
                draws = [self._pick(i) for i in range(n)]
            finally:
                self.epoch = saved
            p = np.fromiter((d[0] for d in draws), dtype=np.int64, count=n)
            pick = np.array([d[1] for d in draws], dtype=np.int64).reshape(n, k)
            del draws
        else:
            p = self.pos_index if self.pos_index is not None else np.zeros(n, dtype=np.int64)
            pick = np.broadcast_to(np.arange(k, dtype=np.int64), (n, k))
        out[:, 1] = self._gather(m.positive, rows, p)
        if k:
            out[:, 2:] = self._gather(m.negatives, np.repeat(rows, k), pick.reshape(-1)).reshape(n, k)
        return out

    def _gather(self, names: list[str], rows: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Hash of text number `which[i]` of table row `rows[i]`, texts counted across `names` in order."""
        res = np.zeros(len(rows), dtype=np.int64)
        if all(self.shapes[name] == "text" for name in names):  # one text per column: `which` is the column
            for j, name in enumerate(names):
                flat = self._column_hashes(name)[2]
                if len(names) == 1:
                    return flat[rows]
                sel = which == j
                res[sel] = flat[rows[sel]]
            return res
        before = np.zeros(len(rows), dtype=np.int64)
        for name in names:
            counts, starts, flat = self._column_hashes(name)
            if counts is None:  # a text column: one text, at table row t
                sel = which == before
                res[sel] = flat[rows[sel]]
                before += 1
                continue
            c = counts[rows]
            sel = (which >= before) & (which < before + c)
            res[sel] = flat[starts[rows[sel]] + which[sel] - before[sel]]
            before += c
        return res

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._draw(int(i))[0]

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, (Sequence, TableRows)) and not isinstance(other, str):
            return len(self) == len(other) and all(a == tuple(b) for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def groups(self):
        """(anchor, all positives, all negatives) of each table row kept, in order (not drawn): for miners."""
        m = self.mapping
        for r in dict.fromkeys(int(x) for x in self.index):
            anchor = self._cols[m.anchor][r].as_py()
            if m.prompt:
                anchor = (self._cols[m.prompt][r].as_py() or "") + anchor
            yield anchor, self._texts(m.positive, r), (self._texts(m.negatives, r) if m.negatives else [])

    def scores(self, i: int) -> tuple[float, ...] | None:
        """Teacher scores of row i's drawn texts, aligned with columns[1:] (NaN where a side has none)."""
        return self._draw(int(i))[1]

    def labels(self) -> np.ndarray | None:
        """Labels aligned with the rows (float64), or None."""
        return None if self.labels_all is None else self.labels_all[self.index]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def take(self, positions) -> "TableRows":
        """A view of the rows at `positions` (same table, same draws): used by the dev split."""
        out = object.__new__(TableRows)
        out.__dict__.update(self.__dict__)
        pos = np.asarray(positions, dtype=np.int64)
        out.index = self.index[pos]
        out.pos_index = self.pos_index[pos] if self.pos_index is not None else None
        out._cache = out._hash_memo = None
        return out

    def fingerprint(self) -> str:
        """16 hex digits: the source files' digest, the mapping, the draw settings and the rows kept."""
        h = hashlib.blake2b(digest_size=8)
        h.update(self._files_fp.encode())
        h.update(repr((self.mapping.describe(), self.k, self.positives, self.short_negatives, self.seed)).encode())
        h.update(np.ascontiguousarray(self.index).tobytes())
        if self.pos_index is not None:
            h.update(np.ascontiguousarray(self.pos_index).tobytes())
        return h.hexdigest()
