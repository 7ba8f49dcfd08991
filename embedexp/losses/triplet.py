"""Triplet loss with a margin (Schroff et al. 2015; Hermans et al. 2017).

Inputs: embeddings ``(anchor, positive, negative_1, ..., negative_m)``, each ``(B, d)`` (or a
dict with those values in that order), ``m >= 1``; no labels. Row ``i`` of ``positive`` is the
positive of anchor ``i`` and row ``i`` of every negative column is a negative of anchor ``i``.
Only these aligned triplets are used (no in-batch negatives).

Formula, with a distance ``D`` and margin ``M >= 0``:

    L = 1/(B m) * sum_i sum_k max(0, D(a_i, p_i) - D(a_i, n_k,i) + M)

With one negative column (``m = 1``) this is the usual ``mean_i max(0, D(a, p) - D(a, n) + M)``;
with several, every (anchor, negative) triplet counts equally.

Distances (``distance=``):

    cosine     D(x, y) = 1 - cos(x, y)            in [0, 2]
    euclidean  D(x, y) = ||x - y||_2              (not squared)
    dot        D(x, y) = -x . y                   (a negative score, so it can be < 0)

Default margin (``margin=None``): 0.2 for cosine and dot, 1.0 for euclidean. The Encoder
L2-normalises by default; then ``D_dot(a,p) - D_dot(a,n) = D_cos(a,p) - D_cos(a,n)`` exactly, so
cosine and dot share a margin, and euclidean distances lie in [0, 2] (``||x-y||^2 = 2 D_cos``),
where 1.0 is a demanding but reachable gap. With ``model.normalize=false`` the dot and euclidean
scales follow the embedding norms; set ``loss.margin`` to match them (sentence-transformers uses
5 for its euclidean default on unnormalised embeddings).

Reference: Schroff et al. 2015 (FaceNet); Hermans et al. 2017 (In Defense of the Triplet Loss).
Same value as sentence-transformers' ``TripletLoss`` for one negative column (its ``COSINE`` /
``EUCLIDEAN`` metrics; it has no dot metric and defaults to euclidean with margin 5).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.infonce import as_columns

DISTANCES = ("cosine", "euclidean", "dot")
DEFAULT_MARGINS = {"cosine": 0.2, "euclidean": 1.0, "dot": 0.2}


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, distance: str) -> torch.Tensor:
    """Row-wise distance ``D(x_i, y_i)`` for ``(B, d)`` inputs -> ``(B,)``."""
    if distance == "cosine":
        return 1 - (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1)
    if distance == "euclidean":
        # exact L2 (no eps added to the difference); its gradient at x_i == y_i is 0, not NaN
        return torch.linalg.vector_norm(x - y, dim=-1)
    if distance == "dot":
        return -(x * y).sum(-1)
    raise ValueError(f"unknown distance {distance!r}")


def check_distance(distance, options: Sequence[str]) -> str:
    if distance not in options:
        raise ConfigError(f"loss.distance={distance!r}; expected one of {', '.join(options)}")
    return distance


def check_cosine_margin(margin, distance: str, zero_ok: bool) -> None:
    """A configured margin on cosine distances (which lie in [0, 2]) must be in [0, 2] ((0, 2] unless `zero_ok`)."""
    from embedexp.checks import check_number

    if margin is not None and distance == "cosine":
        check_number("loss.margin", margin, 0, 2.0, low_open=not zero_ok, why=" (cosine distances lie in [0, 2])")


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class TripletLoss(nn.Module):
    columns = ("anchor", "positive", "negative_1")  # required; further negative_k columns are also used
    needs_labels = False

    def __init__(self, distance: str = "cosine", margin: float | None = None) -> None:
        super().__init__()
        self.distance = check_distance(distance, DISTANCES)
        if margin is None:
            margin = DEFAULT_MARGINS[self.distance]
        if not (is_number(margin) and margin >= 0):
            raise ConfigError(
                f"loss.margin={margin!r}; expected a number >= 0 "
                f"(or null for the {self.distance} default {DEFAULT_MARGINS[self.distance]})"
            )
        self.margin = float(margin)

    @staticmethod
    def check_config(config: dict) -> None:
        """Config-time rule (stricter than the constructor): a cosine margin above 2 can never be met."""
        check_cosine_margin(config.get("margin"), config.get("distance", "cosine"), zero_ok=True)

    def forward(self, embeddings: Sequence[torch.Tensor] | dict, labels: torch.Tensor | None = None) -> torch.Tensor:
        cols = as_columns(embeddings)
        if len(cols) < 3:
            raise ValueError(
                f"TripletLoss needs (anchor, positive, negative[, more negatives...]); got {len(cols)} column(s)"
            )
        anchor, positive, negatives = cols[0], cols[1], cols[2:]
        d_pos = pairwise_distance(anchor, positive, self.distance)  # (B,)
        d_neg = torch.stack([pairwise_distance(anchor, n, self.distance) for n in negatives])  # (m, B)
        return F.relu(d_pos.unsqueeze(0) - d_neg + self.margin).mean()

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, margin={self.margin}"
