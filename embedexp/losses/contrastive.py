"""Contrastive (siamese) loss on labelled pairs, and its online hard-pair variant.

Inputs: embeddings ``(text_a, text_b)``, each ``(B, d)`` (or a dict with those values in that
order), and labels ``y``, a float tensor ``(B,)`` of 0/1: 1 = similar pair, 0 = dissimilar pair
(any other value is an error). Distances (``distance=``): ``cosine`` ``D = 1 - cos(a, b)``, or
``euclidean`` ``D = ||a - b||_2``. Margin ``M > 0``, default 0.5.

Formula (``online=False``), with ``D_i = D(a_i, b_i)``:

    L = 1/B * sum_i 1/2 * ( y_i D_i^2 + (1 - y_i) max(0, M - D_i)^2 )

Online variant (``online=True``, or ``OnlineContrastiveLoss``): only the hard pairs of the batch
count, and the terms are SUMMED, without the 1/2 (sentence-transformers' definition, matched here):

    hard negatives  N = { i : y_i = 0, D_i < max_{j: y_j=1} D_j }
    hard positives  P = { i : y_i = 1, D_i > min_{j: y_j=0} D_j }
    L = sum_{i in P} D_i^2 + sum_{i in N} max(0, M - D_i)^2

If the batch has no positive pair, the negative threshold is the mean negative distance instead
(N = negatives closer than average); if it has no negative pair, P = positives farther than the
mean positive distance. The thresholds are compared only, never differentiated. A batch with no
hard pair gives 0 (and zero gradient). Because the online loss is a sum, its scale (and so the
effective learning rate) grows with the batch size, unlike the mean of the plain variant.

Reference: Hadsell, Chopra & LeCun 2006 (Dimensionality Reduction by Learning an Invariant
Mapping). Their ``Y = 0`` means similar; here, as in sentence-transformers, label 1 means similar.
Same values as sentence-transformers' ``ContrastiveLoss`` (``size_average=True``) and
``OnlineContrastiveLoss``, whose default distance is also cosine with margin 0.5 (their euclidean
adds 1e-6 to ``a - b`` before the norm, ``F.pairwise_distance``; this one is the exact norm).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.cosine import check_pair_inputs
from embedexp.losses.triplet import check_cosine_margin, check_distance, is_number, pairwise_distance

DISTANCES = ("cosine", "euclidean")


class ContrastiveLoss(nn.Module):
    columns = ("text_a", "text_b")
    needs_labels = True

    def __init__(self, margin: float = 0.5, distance: str = "cosine", online: bool = False) -> None:
        super().__init__()
        if not (is_number(margin) and margin > 0):
            raise ConfigError(
                f"loss.margin={margin!r}; expected a number > 0 (dissimilar pairs are pushed to distance >= margin)"
            )
        self.margin = float(margin)
        self.distance = check_distance(distance, DISTANCES)
        if not isinstance(online, bool):
            raise ConfigError(f"loss.online={online!r}; expected true or false")
        self.online = online

    @staticmethod
    def check_config(config: dict) -> None:
        """Config-time rule (stricter than the constructor): a cosine margin above 2 can never be met."""
        check_cosine_margin(config.get("margin", 0.5), config.get("distance", "cosine"), zero_ok=False)

    def forward(self, embeddings: Sequence[torch.Tensor] | dict, labels: torch.Tensor | None = None) -> torch.Tensor:
        name = type(self).__name__
        a, b, y = check_pair_inputs(name, embeddings, labels)
        positive, negative = y == 1, y == 0
        if not bool((positive | negative).all()):
            bad = y[~(positive | negative)][:3].tolist()
            raise ValueError(
                f"{name} needs binary labels (1 = similar, 0 = dissimilar); got {bad}. "
                "For graded similarity scores use loss=cosine"
            )
        d = pairwise_distance(a, b, self.distance)
        pull = d.pow(2)  # for positives
        push = F.relu(self.margin - d).pow(2)  # for negatives
        if not self.online:
            return (0.5 * (y * pull + (1 - y) * push)).mean()

        dd = d.detach()
        n_pos, n_neg = positive.sum(), negative.sum()
        max_pos = dd.masked_fill(~positive, float("-inf")).max()
        min_neg = dd.masked_fill(~negative, float("inf")).min()
        mean_pos = (dd * positive).sum() / n_pos.clamp(min=1)
        mean_neg = (dd * negative).sum() / n_neg.clamp(min=1)
        neg_threshold = torch.where(n_pos > 0, max_pos, mean_neg)
        pos_threshold = torch.where(n_neg > 0, min_neg, mean_pos)
        hard_pos = positive & (dd > pos_threshold)
        hard_neg = negative & (dd < neg_threshold)
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        return torch.where(hard_pos, pull, zero).sum() + torch.where(hard_neg, push, zero).sum()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}, online={self.online}"


class OnlineContrastiveLoss(ContrastiveLoss):
    """``ContrastiveLoss(online=True)``: summed loss over the batch's hard pairs only (see the module docstring)."""

    def __init__(self, margin: float = 0.5, distance: str = "cosine") -> None:
        super().__init__(margin=margin, distance=distance, online=True)
