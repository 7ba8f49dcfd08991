"""MarginMSE: distil a teacher's score margins between the positive and each negative (Hofstätter et al. 2020).

Inputs: embedding columns (anchor, positive, negative_1..negative_n), each (B, d), as a tuple/list or a dict;
``teacher_scores`` (B, 1 + n): the teacher's score of (anchor_i, positive_i), then of (anchor_i, negative_j,i),
e.g. a cross-encoder's logits (the data's ``pos_scores``/``neg_scores`` columns, or a miner with
``miner.teacher_scores=true``). No in-batch negatives: each anchor is compared with its own row only.

Formula, with ``s(q, d) = scale * sim(q, d)`` (sim: dot product or cosine) and ``t`` the teacher's scores:

    L = 1 / (A * n) * sum_{i in anchors} sum_{j=1..n} ( (s(q_i, p_i) - s(q_i, n_ij)) - (t_i,p - t_i,nj) )^2

the mean squared error between the student's and the teacher's margins, over the A anchors in
``anchor_rows`` (all B by default) and the n negatives. With ``scale=1`` this is sentence-transformers'
``MarginMSELoss`` given labels ``[t_p, t_n1, ..., t_nn]`` (``nn.MSELoss`` over the (B, n) margins; its
similarity_fct ``pairwise_dot_score`` is ``similarity="dot"``, ``pairwise_cos_sim`` is ``"cosine"``).

``scale`` multiplies the student's similarities: a cosine lies in [-1, 1], so its margins cannot reach a
cross-encoder's logit margins (often 5-15); ``scale`` (e.g. 20) lets them. Hofstätter et al. use unnormalised
dot products (``similarity=dot`` with ``model.normalize=false``).

Reference: Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
Distillation", arXiv:2010.02666.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from embedexp.losses.infonce import as_columns
from embedexp.losses.teacher import check_positive, check_similarity, own_candidate_scores, teacher_rows


class MarginMSELoss(nn.Module):
    """MSE between student and teacher margins s(q,p) - s(q,n_j) (see the module doc).

    Args:
        similarity: "cosine" (default; what embedexp evaluates with) or "dot".
        scale: factor on the student's similarities (> 0; 1 = sentence-transformers).
    Raises:
        ConfigError: an unknown similarity or a scale that is not a finite number > 0.
    """

    columns = ("anchor", "positive", "negative_1")  # at least one negative
    needs_teacher_scores = True
    in_batch_negatives = False
    supports_anchor_rows = True

    def __init__(self, similarity: str = "cosine", scale: float = 1.0) -> None:
        super().__init__()
        self.similarity = check_similarity(similarity)
        self.scale = check_positive("loss.scale", scale)

    def forward(
        self,
        embeddings: Sequence[torch.Tensor] | dict,
        labels: torch.Tensor | None = None,
        teacher_scores: torch.Tensor | None = None,
        anchor_rows: slice | None = None,
    ) -> torch.Tensor:
        """Mean squared margin error over the anchors in `anchor_rows` (all by default) and their negatives.

        Args:
            embeddings: (anchor, positive, negative_1..negative_n) columns, each (B, d).
            labels: unused (pair labels are not teacher scores).
            teacher_scores: (B, 1 + n) teacher scores, positive first.
            anchor_rows: the rows whose terms are averaged (GradCache anchor chunks, a DDP rank's rows).
        Raises:
            ValueError: fewer than 3 columns, or missing/mis-shaped/non-finite teacher scores.
        """
        cols = as_columns(embeddings)
        if len(cols) < 3:
            raise ValueError(f"MarginMSE needs (anchor, positive, negative_1, ...); got {len(cols)} column(s)")
        batch = cols[0].shape[0]
        rows = anchor_rows if anchor_rows is not None else slice(0, batch)
        teacher = teacher_rows(teacher_scores, len(cols) - 1, batch, rows, "MarginMSE")
        student = own_candidate_scores(cols, rows, self.similarity) * self.scale
        student_margin = student[:, :1] - student[:, 1:]
        teacher_margin = (teacher[:, :1] - teacher[:, 1:]).to(student.dtype)
        return ((student_margin - teacher_margin) ** 2).mean()

    def extra_repr(self) -> str:
        return f"similarity={self.similarity}, scale={self.scale}"
