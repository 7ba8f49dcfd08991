"""Known-positive masking for in-batch-negative losses: a known positive of an anchor is never its negative.

The batch carries, per column, the hash of every text (``text_ids``: one ``(B,)`` int64 tensor per column) and,
per anchor, the hashes of the texts known to be its positives (``known_ids``: ``(B, K)`` int64, padded with 0;
the row's own positive, the positives of rows with the same anchor text, the documents the qrels judge
relevant to its query; see embedexp.data.no_duplicates.KnownPositives). A candidate whose text hash is among
its anchor's known positives gets the logit -inf (it leaves the softmax denominator), except the anchor's own
positive target. Without masking, two rows that share a positive train each other as negatives: for the
anchor, the duplicate scores exactly like its target, so its InfoNCE term is at least log 2 = 0.69.

``in_batch_negatives=False`` (a mixture source without in-batch negatives) masks every candidate of another
row: each anchor is scored against its own positive and its own negatives only.

The masks are boolean ``(A, C)`` tensors (True = masked) over the anchors in ``rows`` and the candidates in
the loss's logit layout; their memory is ``A x C`` bytes (the comparison loops over the K known ids).
"""

from __future__ import annotations

import torch


def known_positive_mask(candidate_ids: torch.Tensor, known_ids: torch.Tensor) -> torch.Tensor:
    """(A, C) bool: candidate c's hash is one of anchor a's known positives.

    Args:
        candidate_ids: (C,) int64 text hashes of the candidates (never 0).
        known_ids: (A, K) int64 known-positive hashes per anchor, 0 = padding.
    """
    mask = torch.zeros(known_ids.shape[0], candidate_ids.shape[0], dtype=torch.bool, device=candidate_ids.device)
    cand = candidate_ids.to(known_ids.device).unsqueeze(0)
    for k in range(known_ids.shape[1]):
        mask |= cand == known_ids[:, k : k + 1]
    return mask


def other_rows_mask(n_anchors: int, candidate_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    """(A, C) bool: candidate c belongs to another row than anchor a (`candidate_rows[c] != target_rows[a]`)."""
    return candidate_rows.unsqueeze(0) != target_rows.unsqueeze(1)


def keep_targets(mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Unmask each anchor's target column (the positive it is trained towards is never masked)."""
    mask = mask.clone()
    mask[torch.arange(mask.shape[0], device=mask.device), targets.to(mask.device)] = False
    return mask
