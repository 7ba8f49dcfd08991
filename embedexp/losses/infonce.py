"""InfoNCE with in-batch negatives (a.k.a. MultipleNegativesRankingLoss, NT-Xent).

Inputs: embeddings ``(anchor, positive, negative_1, ..., negative_m)``, each ``(B, d)``
(or a dict with those values in that order). Row ``i`` of ``positive`` is the positive of
anchor ``i``; every other positive and every negative row of the batch is a negative.

Formula, with ``s(a, b) = cos(a, b) / tau`` and candidates ``C = [positive; negative_1; ...]`` (``(1+m)B`` rows):

    L = 1/B * sum_i -log( exp s(a_i, p_i) / sum_j exp s(a_i, C_j) )

With ``symmetric=True`` the positive -> anchor direction is added and the two are averaged:

    L_sym = (L + 1/B * sum_i -log( exp s(p_i, a_i) / sum_j exp s(p_i, a_j) )) / 2

``anchor_rows`` (a slice) restricts the sum to those anchors and averages over them, with targets
offset by the slice start: used for cross-rank gathering (each rank scores its own anchors against
every rank's candidates) and for GradCache's chunking over anchors.

Reference: van den Oord et al. 2018 (CPC, InfoNCE); Henderson et al. 2017 (in-batch negatives).
Temperature 0.05 is scale 20, the sentence-transformers default.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError


def as_columns(embeddings) -> list[torch.Tensor]:
    """Accept a tuple/list of tensors or a dict (column order preserved)."""
    if isinstance(embeddings, dict):
        return list(embeddings.values())
    return list(embeddings)


class InfoNCELoss(nn.Module):
    columns = ("anchor", "positive")  # required; any further columns are extra negatives
    in_batch_negatives = True
    supports_anchor_rows = True

    def __init__(self, temperature: float = 0.05, symmetric: bool = False) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"loss.temperature={temperature!r}; expected a number > 0 (0.05 = scale 20)")
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)

    def forward(
        self,
        embeddings: Sequence[torch.Tensor] | dict,
        labels: torch.Tensor | None = None,
        anchor_rows: slice | None = None,
    ) -> torch.Tensor:
        cols = as_columns(embeddings)
        if len(cols) < 2:
            raise ValueError(f"InfoNCE needs (anchor, positive, [negatives...]); got {len(cols)} column(s)")
        batch = cols[0].shape[0]
        rows = anchor_rows if anchor_rows is not None else slice(0, batch)
        anchors = F.normalize(cols[0], dim=-1)
        candidates = F.normalize(torch.cat(cols[1:], dim=0), dim=-1)
        target = torch.arange(rows.start, rows.stop, device=anchors.device)
        loss = F.cross_entropy(anchors[rows] @ candidates.T / self.temperature, target)
        if self.symmetric:  # positive_i against all anchors
            backward_scores = candidates[rows] @ anchors.T / self.temperature
            loss = (loss + F.cross_entropy(backward_scores, target)) / 2
        return loss
