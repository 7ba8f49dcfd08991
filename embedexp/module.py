"""The LightningModule: encode every column, then the loss on the embeddings."""

from __future__ import annotations

import lightning as L
import torch

from embedexp.models import Encoder

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


class EmbeddingModule(L.LightningModule):
    def __init__(
        self,
        encoder: Encoder,
        loss: torch.nn.Module,
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.loss = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        embeddings = [self.encoder(features) for features in batch["features"]]
        loss = self.loss(embeddings, batch.get("labels"))
        self.log("train/loss", loss, prog_bar=True, batch_size=embeddings[0].shape[0])
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if any(n in name for n in NO_DECAY) else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(total * self.warmup_ratio)

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
