"""Listwise softmax cross-entropy for cross-encoders (rerankers): the positive must win a softmax over its
row's list (positive + k negatives).

For logits s of shape (B, 1 + k) (column 0: the positive) and `scale` t:

    L = 1 / B * sum_i [ -t s_i0 + log sum_j exp(t s_ij) ]  =  cross_entropy(t s, target = 0)

Only the row's own documents compete (no in-batch negatives: another row's documents were never retrieved
for this query). This is sentence-transformers' `cross_encoder.losses.MultipleNegativesRankingLoss` with
`num_negatives=0` (no in-batch negatives), `activation_fn=None` and `scale=t` on the same (query, positive,
negative_1..k) columns, and ListNet (Cao et al. 2007) with a one-hot target distribution; it is the loss the
"localised contrastive estimation" of Gao et al. 2021 (arXiv 2101.08751) trains rerankers with.
"""

from __future__ import annotations

import torch
from torch import nn

from embedexp.errors import ConfigError


class RerankListwiseLoss(nn.Module):
    """Softmax cross-entropy of the positive over (positive + k negatives): logits (B, 1 + k) -> scalar.

    Args:
        scale: multiplies the logits before the softmax (> 0; 1 = raw logits).
    Raises:
        ConfigError: scale not a positive number.
    """

    kind = "cross_encoder"  # consumes (query, document) scores, not embeddings
    columns = ("anchor", "positive", "negative_1")

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ConfigError(f"loss.scale={scale!r}; expected a positive number")
        self.scale = float(scale)

    def forward(self, scores: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """scores: (B, 1 + k) logits, the positive in column 0; labels: unused (the layout is the label)."""
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return nn.functional.cross_entropy(self.scale * scores.float(), target)
