"""Listwise distillation: KL divergence from the teacher's to the student's score distribution over each anchor's
positive and negatives, optionally plus InfoNCE over in-batch and hard negatives.

Inputs: embedding columns (anchor, positive, negative_1..negative_n), each (B, d), as a tuple/list or a dict;
``teacher_scores`` (B, 1 + n): the teacher's scores of (anchor_i, positive_i), (anchor_i, negative_j,i), e.g. a
cross-encoder's logits (the data's ``pos_scores``/``neg_scores`` columns, or a miner with
``miner.teacher_scores=true``).

Formula, per anchor i over its own candidates c in (p_i, n_i1..n_in), with s = sim (dot or cosine), T_s / T_t
the student / teacher temperatures:

    P_i = softmax_c(t_ic / T_t)        Q_i = softmax_c(s(q_i, c) / T_s)
    KL  = 1 / A * sum_i sum_c P_ic * (log P_ic - log Q_ic)     (times T_s^2 with scale_by_temperature_squared)
    L   = KL + infonce_weight * InfoNCE

over the A anchors in ``anchor_rows`` (all B by default). With ``scale_by_temperature_squared=true`` this is
sentence-transformers' ``DistillKLDivLoss`` (``nn.KLDivLoss(reduction="batchmean")`` times the student
temperature squared, after Hinton et al. 2015) with its ``temperature`` / ``student_temperature`` /
``teacher_temperature``. That factor keeps gradient sizes comparable when a temperature >= 1 softens the
distributions; with a sharp student temperature (0.05, InfoNCE's) it shrinks the loss 400x, so next to an
InfoNCE term at the same temperature the unscaled KL (``false``, the preset's default) weighs comparably: both
have gradient (Q - target) / T_s with respect to the scores.

InfoNCE (``infonce_weight > 0``) is embedexp.losses.infonce.InfoNCELoss over the in-batch and hard negatives
(temperature ``infonce_temperature``, known-positive masking with ``mask_known_positives``); the loss then has
in-batch negatives, and under DDP it is computed on every rank's rows (the teacher scores are gathered with
them), like InfoNCE alone. With ``infonce_weight=0`` the loss is local to each row.

References: Lin et al. 2020, "Distilling Dense Representations for Ranking using Tightly-Coupled Teachers",
arXiv:2010.11386 (listwise KL from a teacher's scores); Tamber et al. 2025, arXiv:2505.19274 (listwise
distillation from a cross-encoder, with and without a contrastive term); sentence-transformers
``DistillKLDivLoss``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.infonce import InfoNCELoss, as_columns
from embedexp.losses.teacher import check_positive, check_similarity, own_candidate_scores, teacher_rows


class DistillKLLoss(nn.Module):
    """KL(teacher || student) over each anchor's own positive + negatives, plus `infonce_weight` x InfoNCE.

    Args:
        similarity: "cosine" (default) or "dot" for the student's scores.
        temperature: both temperatures unless overridden (> 0; sentence-transformers' `temperature`).
        student_temperature: T_s (null: `temperature`).
        teacher_temperature: T_t (null: `temperature`); match it to the spread of the teacher's scores.
        scale_by_temperature_squared: multiply the KL by T_s^2 (sentence-transformers does).
        infonce_weight: weight of the InfoNCE term (>= 0; 0 = KL alone, no in-batch negatives).
        infonce_temperature: InfoNCE's temperature (0.05 = scale 20).
        mask_known_positives: InfoNCE's known-positive masking.
    Raises:
        ConfigError: a bad similarity, temperature or weight (naming the loss.<key>).
    """

    columns = ("anchor", "positive", "negative_1")  # a softmax over one candidate is constant: >= 1 negative
    needs_teacher_scores = True

    def __init__(
        self,
        similarity: str = "cosine",
        temperature: float = 1.0,
        student_temperature: float | None = None,
        teacher_temperature: float | None = None,
        scale_by_temperature_squared: bool = True,
        infonce_weight: float = 0.0,
        infonce_temperature: float = 0.05,
        mask_known_positives: bool = True,
    ) -> None:
        super().__init__()
        self.similarity = check_similarity(similarity)
        self.temperature = check_positive("loss.temperature", temperature)
        s = check_positive("loss.student_temperature", student_temperature, optional=True)
        t = check_positive("loss.teacher_temperature", teacher_temperature, optional=True)
        self.student_temperature = s if s is not None else self.temperature
        self.teacher_temperature = t if t is not None else self.temperature
        if not isinstance(scale_by_temperature_squared, bool):
            raise ConfigError(
                f"loss.scale_by_temperature_squared={scale_by_temperature_squared!r}; expected true or false"
            )
        self.scale_by_temperature_squared = scale_by_temperature_squared
        ok = isinstance(infonce_weight, (int, float)) and not isinstance(infonce_weight, bool)
        if not (ok and 0 <= infonce_weight < float("inf")):
            raise ConfigError(f"loss.infonce_weight={infonce_weight!r}; expected a finite number >= 0 (0 = KL alone)")
        self.infonce_weight = float(infonce_weight)
        try:
            self.infonce = InfoNCELoss(infonce_temperature, mask_known_positives=mask_known_positives)
        except ConfigError as e:
            raise ConfigError(str(e).replace("loss.temperature", "loss.infonce_temperature", 1)) from None

    @property
    def in_batch_negatives(self) -> bool:
        """True with an InfoNCE term: the batch plan avoids duplicates and DDP gathers every rank's rows."""
        return self.infonce_weight > 0

    @property
    def supports_anchor_rows(self) -> bool:
        return True

    @property
    def mask_known_positives(self) -> bool:
        """Known-positive ids are needed only by the InfoNCE term."""
        return self.infonce_weight > 0 and self.infonce.mask_known_positives

    def kl(self, cols: list[torch.Tensor], teacher_scores: torch.Tensor | None, rows: slice) -> torch.Tensor:
        """The KL term alone (batchmean over the anchors in `rows`, times T_s^2 when configured)."""
        batch = cols[0].shape[0]
        teacher = teacher_rows(teacher_scores, len(cols) - 1, batch, rows, "DistillKL")
        student = own_candidate_scores(cols, rows, self.similarity) / self.student_temperature
        log_q = F.log_softmax(student, dim=1)
        p = F.softmax(teacher.to(student.dtype) / self.teacher_temperature, dim=1)
        loss = F.kl_div(log_q, p, reduction="batchmean")
        if self.scale_by_temperature_squared:
            loss = loss * self.student_temperature**2
        return loss

    def forward(
        self,
        embeddings: Sequence[torch.Tensor] | dict,
        labels: torch.Tensor | None = None,
        teacher_scores: torch.Tensor | None = None,
        anchor_rows: slice | None = None,
        text_ids: Sequence[torch.Tensor] | None = None,
        known_ids: torch.Tensor | None = None,
        in_batch_negatives: bool = True,
    ) -> torch.Tensor:
        """KL (+ weighted InfoNCE), averaged over the anchors in `anchor_rows` (all by default).

        Args:
            embeddings: (anchor, positive, negative_1..negative_n) columns, each (B, d).
            labels: unused.
            teacher_scores: (B, 1 + n) teacher scores, positive first (under DDP with InfoNCE: every rank's rows).
            anchor_rows, text_ids, known_ids, in_batch_negatives: as InfoNCELoss (used by the InfoNCE term).
        Raises:
            ValueError: fewer than 3 columns, or missing/mis-shaped/non-finite teacher scores.
        """
        cols = as_columns(embeddings)
        if len(cols) < 3:
            raise ValueError(f"DistillKL needs (anchor, positive, negative_1, ...); got {len(cols)} column(s)")
        rows = anchor_rows if anchor_rows is not None else slice(0, cols[0].shape[0])
        loss = self.kl(cols, teacher_scores, rows)
        if self.infonce_weight > 0:
            nce = self.infonce(
                cols,
                labels,
                anchor_rows=anchor_rows,
                text_ids=text_ids,
                known_ids=known_ids,
                in_batch_negatives=in_batch_negatives,
            )
            loss = loss + self.infonce_weight * nce
        return loss

    def extra_repr(self) -> str:
        return (
            f"similarity={self.similarity}, student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, "
            f"scale_by_temperature_squared={self.scale_by_temperature_squared}, infonce_weight={self.infonce_weight}"
        )
