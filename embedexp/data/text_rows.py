"""Lazy row views over memory-mapped Arrow columns that are not (anchor, positive, negatives) tables.

`TextRows`: one-text rows `(text,)` (TSDAE's unlabelled sentences, format=sentences); `Labels`: the float labels
of a labelled table (labeled_pairs, sts) as a read-only sequence that compares equal to a list of the same
numbers. Neither holds Python objects per row: a row is read from the Arrow column when asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa


class TextRows(Sequence):
    """Rows `(text,)` of one string column of a (memory-mapped) Arrow table, in the order of `index`.

    Args:
        ds: a `datasets.Dataset` (or a `pyarrow.Table`).
        column: the string column.
        files_fingerprint: a digest of the source and the options that made the table (in `fingerprint()`).
        index: table rows in training order (a sample, e.g. `max_rows`); None: every row in order.
    """

    def __init__(self, ds, column: str, files_fingerprint: str, index=None) -> None:
        data = ds if isinstance(ds, pa.Table) else ds.data
        self.table: pa.Table = data.table if hasattr(data, "table") else data
        self.column = column
        self._col = self.table.column(column)
        self._files_fp = files_fingerprint
        n = self.table.num_rows
        self.index = np.arange(n, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return (self._col[int(self.index[i])].as_py(),)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == tuple(b) for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def take(self, positions) -> "TextRows":
        """A view of the rows at `positions` (same table)."""
        out = object.__new__(TextRows)
        out.__dict__.update(self.__dict__)
        out.index = self.index[np.asarray(positions, dtype=np.int64)]
        return out

    def fingerprint(self) -> str:
        """16 hex digits: the source's digest and the rows kept, in order."""
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{self._files_fp}\x1f{self.column}".encode())
        h.update(np.ascontiguousarray(self.index).tobytes())
        return h.hexdigest()


class Labels(Sequence):
    """Read-only float labels (float64, e.g. `TableRows.labels()` read from an Arrow `label` column).

    `labels[i]` is a Python float; `labels == [1.0, 0.0]` compares element by element with any sequence (as the
    list it replaces did) and returns one bool.
    """

    def __init__(self, values) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.values.flags.writeable = False

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [float(x) for x in self.values[i]]
        return float(self.values[i])

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, (Sequence, np.ndarray)) and not isinstance(other, str):
            return len(self) == len(other) and all(float(a) == b for a, b in zip(self.values, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __repr__(self) -> str:
        return f"Labels({self.values.tolist()!r})" if len(self) <= 10 else f"Labels(<{len(self)} floats>)"
