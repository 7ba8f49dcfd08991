"""Training rows that carry teacher scores: what a miner with `miner.teacher_scores=true` returns.

The same interface as table rows with `pos_scores`/`neg_scores` columns (embedexp.data.table_rows.TableRows):
`has_scores` and `scores(i)`, read through `TrainSet.has_scores` / `TrainSet.scores(i)`, so the scores reach the
loss as `batch["scores"]` (embedexp.data.datamodule.ColumnCollator).
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np


class ScoredRows(list):
    """A list of rows (anchor, positive, negative_1..negative_n) with one teacher score per text after the anchor.

    Args:
        rows: the rows, each a tuple of 2 + n texts.
        scores: per row, n + 1 floats aligned with row[1:] (the positive's score, then each negative's);
            NaN where the teacher gave none.
    Raises:
        ValueError: a row whose scores do not match its texts in number.
    """

    has_scores = True

    def __init__(self, rows: Sequence[tuple[str, ...]], scores: Sequence[Sequence[float]]) -> None:
        super().__init__(rows)
        if len(scores) != len(self):
            raise ValueError(f"ScoredRows: {len(scores)} score rows for {len(self)} rows")
        self._scores = np.asarray(scores, dtype=np.float64).reshape(len(self), -1) if len(self) else np.empty((0, 0))
        width = {len(r) - 1 for r in self}
        if len(self) and width != {self._scores.shape[1]}:
            raise ValueError(
                f"ScoredRows: {self._scores.shape[1]} scores per row for rows of {width} texts after the anchor"
            )

    def scores(self, i: int) -> tuple[float, ...]:
        """Row i's teacher scores aligned with its texts after the anchor (positive, then the negatives)."""
        return tuple(float(x) for x in self._scores[i])

    @property
    def score_matrix(self) -> np.ndarray:
        """(rows, 1 + n) float64: every row's scores (read-only view)."""
        view = self._scores.view()
        view.flags.writeable = False
        return view

    def fingerprint(self) -> str:
        """16 hex digits over every text and every score (a resumed run must train on the same teacher)."""
        h = hashlib.blake2b(digest_size=8)
        for row in self:
            h.update("\x1f".join(row).encode("utf-8", "surrogatepass"))
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(self._scores).tobytes())
        return h.hexdigest()

    def __reduce__(self):  # pickled for DataLoader workers and spawned DDP ranks
        return (ScoredRows, (list(self), self._scores.tolist()))


def nan_to_none(values) -> list:
    """Floats for JSON: NaN -> None (JSON has no NaN; json.dump would write a non-standard token)."""
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in values]
