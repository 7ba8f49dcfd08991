"""Cosine-similarity regression (the "CosineSimilarityLoss" of Sentence-BERT STS training).

Inputs: embeddings ``(text_a, text_b)``, each ``(B, d)`` (or a dict with those values in that
order), and labels ``y``, a float tensor ``(B,)`` of graded similarities in [0, 1] (e.g. an STS
score / 5, as ``data=stsb`` gives).

Formula (mean squared error between the cosine and the label):

    L = 1/B * sum_i (cos(a_i, b_i) - y_i)^2

The cosine lies in [-1, 1], so a label of 0 asks for orthogonal texts, not opposite ones.

Reference: Reimers & Gurevych 2019 (Sentence-BERT), regression objective. Same value as
sentence-transformers' ``CosineSimilarityLoss`` with its defaults (``loss_fct=MSELoss()``,
identity ``cos_score_transformation``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.losses.infonce import as_columns


def check_pair_inputs(
    name: str, embeddings, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two columns and one label per row; labels come back as a (B,) tensor in the embeddings' dtype/device."""
    cols = as_columns(embeddings)
    if len(cols) != 2:
        raise ValueError(f"{name} needs exactly two columns (text_a, text_b); got {len(cols)}")
    a, b = cols
    if labels is None:
        raise ValueError(f"{name} needs labels (one float per row); got none")
    labels = torch.as_tensor(labels)
    if labels.numel() != a.shape[0]:
        raise ValueError(f"{name} needs one label per row: {a.shape[0]} rows, {labels.numel()} labels")
    return a, b, labels.reshape(-1).to(device=a.device, dtype=a.dtype)


class CosineSimilarityLoss(nn.Module):
    columns = ("text_a", "text_b")
    needs_labels = True

    def forward(self, embeddings: Sequence[torch.Tensor] | dict, labels: torch.Tensor | None = None) -> torch.Tensor:
        a, b, y = check_pair_inputs("CosineSimilarityLoss", embeddings, labels)
        cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
        return ((cos - y) ** 2).mean()
