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

Known-positive masking (``mask_known_positives=True``, the default; config ``loss.mask_known_positives``):
given ``text_ids`` (one ``(B,)`` int64 hash tensor per column) and ``known_ids`` (``(B, K)`` int64 hashes of
each anchor's known positives, 0-padded), which the data module adds to every batch, a candidate ``C_j``
whose text is a known positive of ``a_i`` (the same text as its positive, or judged relevant in the qrels) is
left out of anchor i's denominator (logit -inf), except the target ``p_i`` itself; in the symmetric term an
anchor ``a_j`` is left out of ``p_i``'s denominator when ``p_i`` is a known positive of ``a_j``. Without the
ids (or with ``mask_known_positives=False``) the loss is exactly the unmasked formula above.
``in_batch_negatives=False`` keeps only anchor i's own row's candidates (its positive and negatives).
See embedexp.losses.known_positives.

Reference: van den Oord et al. 2018 (CPC, InfoNCE); Henderson et al. 2017 (in-batch negatives).
Temperature 0.05 is scale 20, the sentence-transformers default.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.known_positives import keep_targets, known_positive_mask, other_rows_mask


def as_columns(embeddings) -> list[torch.Tensor]:
    """Accept a tuple/list of tensors or a dict (column order preserved)."""
    if isinstance(embeddings, dict):
        return list(embeddings.values())
    return list(embeddings)


class InfoNCELoss(nn.Module):
    columns = ("anchor", "positive")  # required; any further columns are extra negatives
    in_batch_negatives = True
    supports_anchor_rows = True

    def __init__(self, temperature: float = 0.05, symmetric: bool = False, mask_known_positives: bool = True) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"loss.temperature={temperature!r}; expected a number > 0 (0.05 = scale 20)")
        if not isinstance(mask_known_positives, bool):
            raise ConfigError(f"loss.mask_known_positives={mask_known_positives!r}; expected true or false")
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)
        self.mask_known_positives = mask_known_positives

    def forward(
        self,
        embeddings: Sequence[torch.Tensor] | dict,
        labels: torch.Tensor | None = None,
        anchor_rows: slice | None = None,
        text_ids: Sequence[torch.Tensor] | None = None,
        known_ids: torch.Tensor | None = None,
        in_batch_negatives: bool = True,
    ) -> torch.Tensor:
        """Mean loss over the anchors in `anchor_rows` (all by default); see the module doc for the ids."""
        cols = as_columns(embeddings)
        if len(cols) < 2:
            raise ValueError(f"InfoNCE needs (anchor, positive, [negatives...]); got {len(cols)} column(s)")
        batch = cols[0].shape[0]
        rows = anchor_rows if anchor_rows is not None else slice(0, batch)
        anchors = F.normalize(cols[0], dim=-1)
        candidates = F.normalize(torch.cat(cols[1:], dim=0), dim=-1)
        target = torch.arange(rows.start, rows.stop, device=anchors.device)
        use_ids = self.mask_known_positives and text_ids is not None and known_ids is not None
        scores = anchors[rows] @ candidates.T / self.temperature
        mask = None
        if use_ids:
            mask = known_positive_mask(torch.cat(list(text_ids[1:])), known_ids[rows])
        if not in_batch_negatives:
            cand_rows = torch.arange(candidates.shape[0], device=anchors.device) % batch
            other = other_rows_mask(len(target), cand_rows, target)
            mask = other if mask is None else mask | other
        if mask is not None:
            scores = scores.masked_fill(keep_targets(mask, target), float("-inf"))
        loss = F.cross_entropy(scores, target)
        if self.symmetric:  # positive_i against all anchors
            backward_scores = candidates[rows] @ anchors.T / self.temperature
            back = None
            if use_ids:  # anchor j is not a negative of p_i when p_i is a known positive of a_j
                back = known_positive_mask(text_ids[1][rows], known_ids).T
            if not in_batch_negatives:
                other = other_rows_mask(len(target), torch.arange(batch, device=anchors.device), target)
                back = other if back is None else back | other
            if back is not None:
                backward_scores = backward_scores.masked_fill(keep_targets(back, target), float("-inf"))
            loss = (loss + F.cross_entropy(backward_scores, target)) / 2
        return loss
