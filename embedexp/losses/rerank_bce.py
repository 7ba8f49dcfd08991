"""Pointwise binary cross-entropy for cross-encoders (rerankers): every (query, document) logit is a
"relevant?" classifier, label 1 for the row's positive and 0 for each of its negatives.

For logits s of shape (B, 1 + k) (column 0: the positive, columns 1..k: the row's negatives) and labels
y[:, 0] = 1, y[:, 1:] = 0, with w = pos_weight (1 when null):

    L = -1 / (B (1 + k)) * sum_{i,j} [ w y_ij log sigmoid(s_ij) + (1 - y_ij) log(1 - sigmoid(s_ij)) ]

i.e. `torch.nn.BCEWithLogitsLoss(pos_weight=w)` over the B (1 + k) pairs, the loss of sentence-transformers'
`cross_encoder.losses.BinaryCrossEntropyLoss` (activation_fn=Identity, the MS MARCO rerankers' recipe) fed the
same pairs as labelled (query, document) rows. `pos_weight = k` balances one positive against k negatives.
"""

from __future__ import annotations

import torch
from torch import nn

from embedexp.errors import ConfigError


class RerankBCELoss(nn.Module):
    """Pointwise BCE on cross-encoder logits (B, 1 + k) -> scalar. See the module doc for the formula.

    Args:
        pos_weight: weight of the positive's term (> 0), or null for 1.
    Raises:
        ConfigError: pos_weight not a positive number.
    """

    kind = "cross_encoder"  # consumes (query, document) scores, not embeddings
    columns = ("anchor", "positive", "negative_1")

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        if pos_weight is not None and (
            isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)) or not pos_weight > 0
        ):
            raise ConfigError(f"loss.pos_weight={pos_weight!r}; expected a positive number or null")
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def forward(self, scores: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """scores: (B, 1 + k) logits, the positive in column 0; labels: unused (the layout is the label)."""
        target = torch.zeros_like(scores)
        target[:, 0] = 1.0
        weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=scores.device)
        return nn.functional.binary_cross_entropy_with_logits(scores.float(), target, pos_weight=weight)
