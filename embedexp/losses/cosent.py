"""CoSENT: a ranking loss over the cosine similarities of scored pairs (STS-style data).

Inputs: embeddings ``(text_a, text_b)``, each ``(B, d)`` (or a dict with those values in that order), and
labels ``y``, a float tensor ``(B,)`` of graded similarities (any scale: only their order is used).

Formula, with ``c_i = cos(a_i, b_i)`` and scale ``s`` (``1 / temperature``):

    L = log(1 + sum_{(i, j): y_i < y_j} exp(s * (c_i - c_j)))

Every pair of rows whose gold order is ``y_i < y_j`` is penalised when its cosines are in the other order,
softly, with a margin set by ``s``. Unlike CosineSimilarityLoss it never asks a cosine to equal a label, so
the labels need no rescaling and the cosine's [-1, 1] range does not bias the fit.

Reference: Su Jianlin, "CoSENT" (2022, kexue.fm/archives/8847); same value as sentence-transformers'
``CoSENTLoss(scale=20)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.cosine import check_pair_inputs


class CoSENTLoss(nn.Module):
    columns = ("text_a", "text_b")
    needs_labels = True

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
            raise ConfigError(f"loss.scale={scale!r}; expected a number > 0 (20 is CoSENT's default)")
        self.scale = float(scale)

    def forward(self, embeddings: Sequence[torch.Tensor] | dict, labels: torch.Tensor | None = None) -> torch.Tensor:
        a, b, y = check_pair_inputs("CoSENTLoss", embeddings, labels)
        cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1) * self.scale  # (B,)
        diff = cos[:, None] - cos[None, :]  # (B, B): s * (c_i - c_j)
        wrong_order = y[:, None] < y[None, :]  # pairs (i, j) with y_i < y_j
        terms = diff.masked_fill(~wrong_order, float("-inf")).reshape(-1)
        return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)  # log(1 + sum exp(...))

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
