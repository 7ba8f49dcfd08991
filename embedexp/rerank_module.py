"""The LightningModule for cross-encoders (rerankers): score every row's (query, document) pairs, then the loss.

A batch has columns (anchor, positive, negative_1..negative_k) (mined negatives, e.g. `miner=bm25`). Each
row gives 1 + k pairs (query, positive), (query, negative_j), scored in one forward of the cross-encoder into
logits of shape (B, 1 + k), positive first; the loss (`embedexp.losses.rerank_bce`, `rerank_listwise`) maps
them to a scalar. The optimiser, LR schedule, gradient clipping, precision, NaN handling, checkpointing and
resume are those of `embedexp.module.EmbeddingModule`, which this class extends: only the step differs.
Rows are independent (no in-batch negatives), so under DDP each rank's mean loss is averaged by DDP as usual.
"""

from __future__ import annotations

import torch

from embedexp.errors import ConfigError
from embedexp.module import EmbeddingModule


class RerankModule(EmbeddingModule):
    """`EmbeddingModule` with a cross-encoder step.

    Args:
        model: a `embedexp.models.cross_encoder.CrossEncoderModel` (kept as `self.encoder`, the attribute the
            shared callbacks read).
        loss: a cross-encoder loss (`kind = "cross_encoder"`): logits (B, 1 + k) -> scalar.
        **optim: lr, weight_decay, warmup_ratio, gradient_clip_val, accumulate_grad_batches, skip_bad_batches
            as for EmbeddingModule.
    Raises:
        ConfigError: trainer.grad_cache set (GradCache caches embeddings; a cross-encoder has none).
    """

    def __init__(self, model, loss: torch.nn.Module, grad_cache: dict | None = None, **optim) -> None:
        if grad_cache and (grad_cache.get("chunk_size") if isinstance(grad_cache, dict) else True):
            raise ConfigError(
                "trainer.grad_cache.chunk_size is set, but GradCache caches embeddings and a cross-encoder has "
                "none; expected trainer.grad_cache.chunk_size=null (use trainer.accumulate_grad_batches)"
            )
        super().__init__(model, loss, grad_cache=None, **optim)

    def pair_logits(self, texts: list[list[str]]) -> torch.Tensor:
        """(B, 1 + k) logits of the pairs (texts[0][i], texts[c][i]) for c = 1..k+1; texts are the batch columns."""
        queries, docs = texts[0], texts[1:]
        rows, width = len(queries), len(docs)
        pair_q = [queries[i] for i in range(rows) for _ in range(width)]
        pair_d = [docs[c][i] for i in range(rows) for c in range(width)]
        features = self.encoder.tokenize_pairs(pair_q, pair_d)
        logits = self.encoder({k: v.to(self.device) for k, v in features.items()})
        return logits.view(rows, width)

    def compute_loss(self, batch) -> torch.Tensor:
        return self.loss(self.pair_logits(batch["texts"]), batch.get("labels"))
