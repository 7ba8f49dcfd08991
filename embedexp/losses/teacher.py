"""Shared pieces of the distillation losses (MarginMSE, listwise KL): student scores and teacher-score checks.

Both losses score each anchor against its OWN candidates only, the row's positive and its negatives, in column
order: ``s[i, j] = sim(anchor_i, column_{j+1}[i])`` for ``j = 0..n-1`` (``n = number of columns - 1``), the
layout of the teacher scores the data carries (``batch["scores"]``: positive first, then the negatives).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from embedexp.errors import ConfigError

SIMILARITIES = ("cosine", "dot")


def check_similarity(value: str) -> str:
    """`loss.similarity` must be cosine or dot; returns it."""
    if value not in SIMILARITIES:
        raise ConfigError(f"loss.similarity={value!r}; expected one of {', '.join(SIMILARITIES)}")
    return value


def check_positive(key: str, value, optional: bool = False) -> float | None:
    """A finite number > 0 (or None when `optional`) for config key `key`."""
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")
    if not ok:
        raise ConfigError(f"{key}={value!r}; expected {'null or ' if optional else ''}a finite number > 0")
    return float(value)


def own_candidate_scores(cols: Sequence[torch.Tensor], rows: slice, similarity: str) -> torch.Tensor:
    """Student scores of each anchor in `rows` against its own positive and negatives.

    Args:
        cols: the embedding columns, each (B, d): anchor, positive, negative_1..negative_n.
        rows: the anchors (and candidates) scored: a slice of the B rows.
        similarity: "dot" (inner product) or "cosine" (inner product of L2-normalised vectors).
    Returns:
        (A, n) scores, A = rows' length, n = len(cols) - 1, in a float dtype of at least float32
        (bf16 embeddings are scored in float32).
    """
    dtype = torch.promote_types(cols[0].dtype, torch.float32)
    cols = [c[rows].to(dtype) for c in cols]
    if similarity == "cosine":
        cols = [F.normalize(c, p=2, dim=-1) for c in cols]
    anchor = cols[0]
    return torch.stack([(anchor * c).sum(dim=-1) for c in cols[1:]], dim=1)


def teacher_rows(teacher_scores: torch.Tensor | None, n_candidates: int, batch: int, rows: slice, name: str):
    """The teacher scores of the anchors in `rows`, checked: (A, n_candidates), finite, no gradient.

    Raises:
        ValueError: no teacher scores, a shape that is not (batch, n_candidates), or a NaN/inf score
            (EmbeddingModule checks the batch first and raises a DataError naming the row).
    """
    if teacher_scores is None:
        raise ValueError(
            f"{name} needs teacher_scores=(B, {n_candidates}) (positive, then each negative); got none. The data "
            "carries them as pos_scores/neg_scores columns, or a miner with miner.teacher_scores=true"
        )
    if tuple(teacher_scores.shape) != (batch, n_candidates):
        raise ValueError(
            f"{name}: teacher_scores of shape {tuple(teacher_scores.shape)}; expected (batch, 1 + negatives) = "
            f"({batch}, {n_candidates})"
        )
    scores = teacher_scores[rows].detach()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name}: teacher_scores contain NaN or inf; expected a finite score for every candidate")
    return scores
