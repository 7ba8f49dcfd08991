"""GISTEmbed: InfoNCE whose in-batch candidates are filtered by a frozen guide model.

Inputs: embeddings ``(anchor, positive, negative_1, ..., negative_m)``, each ``(B, d)`` (or a dict with
those values in that order), exactly as for :class:`~embedexp.losses.infonce.InfoNCELoss`, plus the
keyword argument ``guide_embeddings``: the same columns embedded by the frozen guide model
(``(B, d_guide)`` each; ``d_guide`` may differ from ``d``). Guide embeddings are constants: they are
detached, so no gradient ever reaches them.

Notation: ``s(x, y) = cos(x, y)`` from the trained embeddings, ``g(x, y) = cos(x, y)`` from the guide
embeddings of the same texts, ``tau`` the temperature. Row ``i`` (anchor ``a_i``) has the logits, in
this column order (``B`` columns per block):

    block "ap":   s(a_i, p_j) / tau           j = 0..B-1   (target: j = i)
    block "aa":   s(a_i, a_j) / tau           j = 0..B-1   (only with contrast_anchors=True)
    block "pp":   s(p_i, p_j) / tau           j = 0..B-1   (only with contrast_positives=True)
    block "an_k": s(a_i, n^k_j) / tau         j = 0..B-1   (one block per negative column k)

    L = 1/B * sum_i -log( exp(ap_ii) / sum_{unmasked c} exp(row_i[c]) )

What is masked (logit set to -inf before the softmax): with the threshold

    absolute:  t_i = g(a_i, p_i) - margin
    relative:  t_i = g(a_i, p_i) - margin * |g(a_i, p_i)|   ("margin" as a fraction below the positive
               score; the |.| makes it lower the threshold also when g(a_i, p_i) < 0)

entry ``c`` of row ``i`` is masked iff the guide similarity of that entry's pair (``g(a_i, p_j)``,
``g(a_i, a_j)``, ``g(p_i, p_j)`` or ``g(a_i, n^k_j)``) is ``> t_i`` (strictly), except

  * the target ``ap_ii`` (the positive itself), which is never masked, and
  * the self-similarities ``aa_ii = s(a_i, a_i)`` and ``pp_ii = s(p_i, p_i)``, which are always masked.

Note the "pp" block is compared with the same anchor threshold ``t_i``. Every row keeps its target, so
no row is entirely ``-inf``. With margin=0 and "absolute", exactly the candidates the guide scores above
the anchor's own positive are dropped (likely false negatives).

This is the mathematics of sentence-transformers' ``GISTEmbedLoss`` (which also defaults to
temperature 0.01 and both contrast flags on; it accepts at most one negative column, its
``CachedGISTEmbedLoss`` any number, which is what this loss does too). The one difference: ST masks the
self-similarities only through the rule (``g(a_i, a_i) = 1 > t_i``); here they are masked
unconditionally, so they stay masked also when ``t_i >= 1`` (the guide scores the positive as a
duplicate of the anchor and margin is 0). Otherwise the two agree.

With ``symmetric=True`` (no ST counterpart) the positive -> anchor direction is added and the two are
averaged, like InfoNCELoss: the backward term is this loss applied to the columns ``(positive, anchor)``
without the negative columns, with the roles of the contrast flags kept on their columns (the
``s(p_i, p_j)`` "same-side" block appears iff contrast_positives, the ``s(a_i, a_j)`` block iff
contrast_anchors), masked by the same rule with ``t_i`` from ``g(p_i, a_i)``.

Known-positive masking (``mask_known_positives=True``, the default) works as in InfoNCELoss: with the
batch's ``text_ids`` and ``known_ids`` (embedexp.losses.known_positives), entry ``c`` of row ``i`` is also
masked when its text is a known positive of anchor ``i`` (blocks ap, pp, an_k) or, in block aa, when ``a_j``
is the same text as ``a_i``; in the symmetric term ``s(p_i, a_j)`` is masked when ``p_i`` is a known positive
of ``a_j``. ``in_batch_negatives=False`` masks every entry of another row (only the row's own positive and
negatives remain).

Reference: Solatorio 2024, "GISTEmbed: Guided In-sample Selection of Training Negatives for Text
Embedding Fine-tuning", arXiv:2402.16829. Temperature 0.01 is the paper's and ST's default.

The guide model: ``guide`` (an ``nn.Module`` or None, config key ``loss.guide``) is only stored here,
frozen (``requires_grad_(False)``, ``eval()``); the LightningModule embeds each batch with it under
``torch.no_grad`` and passes the result as ``guide_embeddings``. It is kept in a plain list, not as a
registered submodule, so that it is not in ``parameters()`` (never given to the optimiser), not in
``state_dict()`` (checkpoints hold only the trained model; the guide is a preset that can be reloaded),
and ``loss.train()`` (which Lightning calls on the whole module each epoch) cannot put it back into
training mode with dropout on. The price is that ``.to(device)`` does not move it: the caller moves the
guide itself (embedexp.module.guide_embeddings does).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.infonce import as_columns
from embedexp.losses.known_positives import known_positive_mask

MARGIN_STRATEGIES = ("absolute", "relative")


def _cos_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, d), (m, d) -> (n, m) cosine similarities."""
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


class GISTLoss(nn.Module):
    columns = ("anchor", "positive")  # required; any further columns are extra negatives
    needs_labels = False
    in_batch_negatives = True  # under DDP it scores every rank's rows (full-batch loss on each rank)

    def __init__(
        self,
        temperature: float = 0.01,
        margin_strategy: str = "absolute",
        margin: float = 0.0,
        symmetric: bool = False,
        contrast_anchors: bool = True,
        contrast_positives: bool = True,
        guide: nn.Module | None = None,
        mask_known_positives: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(mask_known_positives, bool):
            raise ConfigError(f"loss.mask_known_positives={mask_known_positives!r}; expected true or false")
        self.mask_known_positives = mask_known_positives
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0):
            raise ConfigError(
                f"loss.temperature={temperature!r}; expected a number > 0 (0.01 = scale 100, the GISTEmbed default)"
            )
        if margin_strategy not in MARGIN_STRATEGIES:
            raise ConfigError(
                f"loss.margin_strategy={margin_strategy!r}; expected one of {', '.join(MARGIN_STRATEGIES)}"
            )
        if not (
            isinstance(margin, (int, float)) and not isinstance(margin, bool) and math.isfinite(margin) and margin >= 0
        ):
            raise ConfigError(
                f"loss.margin={margin!r}; expected a number >= 0 (how far below the positive's guide score a "
                "candidate may score before it is masked; 0 = mask candidates scored above the positive)"
            )
        self.temperature = float(temperature)
        self.margin_strategy = margin_strategy
        self.margin = float(margin)
        self.symmetric = bool(symmetric)
        self.contrast_anchors = bool(contrast_anchors)
        self.contrast_positives = bool(contrast_positives)
        self._guide: list[nn.Module] = []  # a list, not a submodule: see the module docstring
        self.set_guide(guide)

    @staticmethod
    def check_config(config: dict) -> None:
        """Config-time rule: a relative margin is a fraction of the positive's score (<= 1); an absolute one a
        difference of cosine scores (<= 2)."""
        from embedexp.checks import check_number

        margin, relative = config.get("margin", 0.0), config.get("margin_strategy", "absolute") == "relative"
        why = " (a fraction of the positive's score)" if relative else " (cosine scores lie in [-1, 1])"
        check_number("loss.margin", margin, 0, 1.0 if relative else 2.0, why=why)

    # ------------------------------------------------------------------ guide model

    @property
    def guide(self) -> nn.Module | None:
        return self._guide[0] if self._guide else None

    def set_guide(self, guide: nn.Module | None) -> None:
        if guide is not None:
            if not isinstance(guide, nn.Module):
                raise ConfigError(f"loss.guide={type(guide).__name__}; expected a model preset (an nn.Module) or null")
            guide.requires_grad_(False)
            guide.eval()
        self._guide[:] = [] if guide is None else [guide]

    def __setattr__(self, name: str, value) -> None:
        # nn.Module.__setattr__ would register a module assigned to `guide` as a trained submodule
        if name == "guide":
            self.set_guide(value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ masking rule

    def _threshold(self, positive_score: torch.Tensor) -> torch.Tensor:
        if self.margin_strategy == "absolute":
            return positive_score - self.margin
        return positive_score - self.margin * positive_score.abs()

    def _direction(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negatives: Sequence[torch.Tensor],
        contrast_query: bool,
        contrast_positive: bool,
        guide_query: torch.Tensor,
        guide_positive: torch.Tensor,
        guide_negatives: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Logits (None when query is None) and mask, both (B, n_blocks * B), for one direction."""
        batch = guide_query.shape[0]
        eye = torch.eye(batch, dtype=torch.bool, device=guide_query.device)
        g_qp = _cos_matrix(guide_query, guide_positive)
        threshold = self._threshold(g_qp.diagonal()).unsqueeze(1)

        guide_blocks = [g_qp]
        forced = [("keep", eye)]  # the target is never masked
        if contrast_query:
            guide_blocks.append(_cos_matrix(guide_query, guide_query))
            forced.append(("mask", eye))  # self-similarity
        if contrast_positive:
            guide_blocks.append(_cos_matrix(guide_positive, guide_positive))
            forced.append(("mask", eye))
        for g_neg in guide_negatives:
            guide_blocks.append(_cos_matrix(guide_query, g_neg))
            forced.append(("rule", None))

        masks = []
        for g_block, (how, where) in zip(guide_blocks, forced):
            m = g_block > threshold
            if how == "keep":
                m = m & ~where
            elif how == "mask":
                m = m | where
            masks.append(m)
        mask = torch.cat(masks, dim=1)

        if query is None:
            return None, mask
        q = F.normalize(query, dim=-1)
        p = F.normalize(positive, dim=-1)
        blocks = [q @ p.T]
        if contrast_query:
            blocks.append(q @ q.T)
        if contrast_positive:
            blocks.append(p @ p.T)
        for neg in negatives:
            blocks.append(q @ F.normalize(neg, dim=-1).T)
        logits = torch.cat(blocks, dim=1) / self.temperature
        return logits, mask

    def mask(self, guide_columns: Sequence[torch.Tensor] | dict) -> torch.Tensor:
        """(B, n_blocks * B) bool, True = masked, for the anchor -> candidates direction, in the logit
        layout of the module docstring: ap | aa (if contrast_anchors) | pp (if contrast_positives) | an_1 | ...

        For the symmetric backward direction pass the columns ``(positive, anchor)`` to a loss with
        the contrast flags swapped.
        """
        g = [c.detach() for c in as_columns(guide_columns)]
        if len(g) < 2:
            raise ValueError(f"GIST needs guide columns (anchor, positive, [negatives...]); got {len(g)}")
        with torch.no_grad():
            _, m = self._direction(None, None, (), self.contrast_anchors, self.contrast_positives, g[0], g[1], g[2:])
        return m

    # ------------------------------------------------------------------ loss

    def forward(
        self,
        embeddings: Sequence[torch.Tensor] | dict,
        labels: torch.Tensor | None = None,
        guide_embeddings: Sequence[torch.Tensor] | dict | None = None,
        text_ids: Sequence[torch.Tensor] | None = None,
        known_ids: torch.Tensor | None = None,
        in_batch_negatives: bool = True,
    ) -> torch.Tensor:
        cols = as_columns(embeddings)
        if len(cols) < 2:
            raise ValueError(f"GIST needs (anchor, positive, [negatives...]); got {len(cols)} column(s)")
        if guide_embeddings is None:
            raise ValueError(
                "GISTLoss needs guide_embeddings= (the same columns embedded by the frozen guide model, loss.guide)"
            )
        guide = [g.detach() for g in as_columns(guide_embeddings)]
        if len(guide) != len(cols):
            raise ValueError(f"GIST: {len(cols)} embedding columns but {len(guide)} guide columns")
        batch = cols[0].shape[0]
        for k, (c, g) in enumerate(zip(cols, guide)):
            if c.shape[0] != batch or g.shape[0] != batch:
                raise ValueError(
                    f"GIST: column {k} has {c.shape[0]} rows and guide column {k} {g.shape[0]}; expected {batch}"
                )
        guide = [g.to(device=cols[0].device) for g in guide]
        target = torch.arange(batch, device=cols[0].device)

        logits, mask = self._direction(
            cols[0], cols[1], cols[2:], self.contrast_anchors, self.contrast_positives, guide[0], guide[1], guide[2:]
        )
        use_ids = self.mask_known_positives and text_ids is not None and known_ids is not None
        ids = [t.to(target.device) for t in text_ids] if use_ids else None
        known = known_ids.to(target.device) if use_ids else None
        extra = self._id_mask(ids, known, batch, len(cols) - 2, False, in_batch_negatives, target)
        if extra is not None:
            mask = mask | extra
        loss = F.cross_entropy(logits.masked_fill(mask, float("-inf")), target)
        if self.symmetric:
            logits_b, mask_b = self._direction(
                cols[1], cols[0], (), self.contrast_positives, self.contrast_anchors, guide[1], guide[0], ()
            )
            extra = self._id_mask(ids, known, batch, 0, True, in_batch_negatives, target)
            if extra is not None:
                mask_b = mask_b | extra
            loss = (loss + F.cross_entropy(logits_b.masked_fill(mask_b, float("-inf")), target)) / 2
        return loss

    def _id_mask(self, ids, known, batch, n_neg, backward, in_batch_negatives, target) -> torch.Tensor | None:
        """Known-positive / other-row masks in the logit layout of `_direction` (target entries kept)."""
        if ids is None and in_batch_negatives:
            return None
        eye = torch.eye(batch, dtype=torch.bool, device=target.device)
        blocks = []
        if ids is not None:
            same_anchor = ids[0].unsqueeze(0) == ids[0].unsqueeze(1)
            positive_known = known_positive_mask(ids[1], known)  # [i, j]: p_j is a known positive of a_i
            if backward:  # query p_i: [i, j] = p_i is a known positive of a_j
                blocks.append(known_positive_mask(ids[1], known).T & ~eye)
                first, second = (self.contrast_positives, positive_known), (self.contrast_anchors, same_anchor)
            else:
                blocks.append(positive_known & ~eye)
                first, second = (self.contrast_anchors, same_anchor), (self.contrast_positives, positive_known)
            for on, block in (first, second):
                if on:
                    blocks.append(block)
            for k in range(n_neg):
                blocks.append(known_positive_mask(ids[2 + k], known))
        mask = torch.cat(blocks, dim=1) if blocks else None
        if not in_batch_negatives:
            n_blocks = 1 + int(self.contrast_anchors) + int(self.contrast_positives) + n_neg
            other = (~eye).repeat(1, n_blocks)
            mask = other if mask is None else mask | other
        return mask

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, margin_strategy={self.margin_strategy!r}, margin={self.margin}, "
            f"symmetric={self.symmetric}, contrast_anchors={self.contrast_anchors}, "
            f"contrast_positives={self.contrast_positives}, guide={type(self.guide).__name__ if self.guide else None}"
        )
