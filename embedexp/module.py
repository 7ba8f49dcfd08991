"""The LightningModule: encode every column, then the loss on the embeddings."""

from __future__ import annotations

import lightning as L
import torch

from embedexp.models import Encoder

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def loss_attr(loss: torch.nn.Module, name: str):
    """An attribute of the loss or of the loss it wraps (Matryoshka)."""
    while loss is not None:
        value = getattr(loss, name, None)
        if value is not None and value is not False:
            return value
        loss = getattr(loss, "loss", None)
    return None


@torch.no_grad()
def guide_embeddings(guide, texts: list[list[str]], kinds, device) -> list[torch.Tensor]:
    """Frozen guide model (GISTEmbed): embeddings of the same texts, never part of the graph."""
    if guide.device != device:
        guide.to(device)
    return [guide.encode(col, kind, batch_size=len(col)).to(device) for col, kind in zip(texts, kinds)]


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

    def on_train_start(self) -> None:
        # from_pretrained returns models in eval mode and Lightning keeps modes as found: switch dropout on
        self.train()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["texts"][0]))
        return loss

    def compute_loss(self, batch) -> torch.Tensor:
        features = batch["features"]
        labels = batch.get("labels")
        if loss_attr(self.loss, "needs_tokens"):
            # TSDAE: only the damaged column is encoded; the original's token ids are the decoder's target
            return self.loss([self.encoder(features[0])], labels, target_features=features[1])
        embeddings = [self.encoder(f) for f in features]
        extra = {}
        guide = loss_attr(self.loss, "guide")
        if guide is not None:
            extra["guide_embeddings"] = guide_embeddings(guide, batch["texts"], batch["kinds"], embeddings[0].device)
        return self.loss(embeddings, labels, **extra)

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
