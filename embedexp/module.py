"""The LightningModule: encode every column, then the loss on the embeddings.

In-batch-negative losses see every rank's rows (cross-rank gather) under DDP. With
`grad_cache.chunk_size` set, the step runs GradCache with manual optimisation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

import lightning as L
import torch

from embedexp.distributed.gather import all_reduce_sum_, gather, gather_extra, local_rows, world
from embedexp.distributed.grad_cache import grad_cache_backward, loss_and_embedding_grads
from embedexp.errors import ConfigError, DataError, NumericalError
from embedexp.losses.config import loss_attr
from embedexp.models import Encoder

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
log = logging.getLogger("embedexp.train")


def planned_updates(trainer: L.Trainer, manual_accumulate: int = 1) -> int:
    """Optimiser updates the run will make: the length of the LR schedule (>= 1).

    Lightning's automatic optimisation steps after every `accumulate_grad_batches` batches and on the last
    batch of each epoch (a partial window), so an epoch of `b` batches makes ceil(b / accumulate) updates;
    `trainer.estimated_stepping_batches` counts exactly that, capped by `max_steps` (which counts updates).
    Under manual optimisation (GradCache) Lightning sees accumulate = 1, so its estimate counts batches; the
    module accumulates `manual_accumulate` batches itself, with the same partial last window per epoch, so
    the count is ceil(b / manual_accumulate) per epoch, capped by `max_steps` (also updates: `global_step`
    counts `optimizer.step()` calls there).
    """
    estimate = trainer.estimated_stepping_batches  # also loads the train loader, so num_training_batches is known
    if manual_accumulate > 1:
        batches = trainer.num_training_batches
        if trainer.max_epochs == -1 or batches == float("inf"):
            estimate = trainer.max_steps
        else:
            estimate = math.ceil(batches / manual_accumulate) * max(int(trainer.max_epochs or 1), 1)
            if trainer.max_steps != -1:
                estimate = min(estimate, trainer.max_steps)
    if estimate == float("inf") or estimate is None or estimate < 0:
        raise ConfigError(
            "trainer.max_steps=-1 with an endless run (max_epochs=-1 or an iterable dataset); "
            "expected trainer.max_steps > 0 so the learning-rate schedule has a length"
        )
    return max(int(estimate), 1)


@torch.no_grad()
def guide_embeddings(guide, texts: list[list[str]], kinds, device) -> list[torch.Tensor]:
    """Frozen guide model (GISTEmbed): embeddings of the same texts, never part of the graph."""
    if guide.device != device:
        guide.to(device)
    return [guide.encode(col, kind, batch_size=len(col)).to(device) for col, kind in zip(texts, kinds)]


def teacher_scores(batch) -> torch.Tensor:
    """The batch's teacher scores (B, n_columns - 1), checked: present and finite.

    Raises:
        ConfigError: the batch has none (data without pos_scores/neg_scores and no miner.teacher_scores).
        DataError: a missing (NaN) or infinite score, naming the column and the row's anchor text.
    """
    scores = batch.get("scores")
    if scores is None:
        raise ConfigError(
            "the loss distils teacher scores, but this batch has none; expected data with pos_scores/neg_scores "
            "columns or miner.teacher_scores=true"
        )
    bad = (~torch.isfinite(scores)).nonzero()
    if len(bad):
        i, j = (int(x) for x in bad[0])
        columns = ["positive"] + [f"negative_{k}" for k in range(1, scores.shape[1])]
        anchor = batch["texts"][0][i]
        shown = anchor if len(anchor) <= 80 else anchor[:77] + "..."
        raise DataError(
            f"teacher score of the {columns[j]} is {float(scores[i, j])} in the training row with anchor "
            f"{shown!r} ({len(bad)} such score(s) in this batch); expected a finite score for the positive and "
            "every negative (pos_scores/neg_scores of that row, or the miner's teacher)"
        )
    return scores


class EmbeddingModule(L.LightningModule):
    def __init__(
        self,
        encoder: Encoder,
        loss: torch.nn.Module,
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        grad_cache: dict | None = None,
        gradient_clip_val: float | None = None,
        accumulate_grad_batches: int = 1,
        skip_bad_batches: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.loss = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.grad_cache = dict(grad_cache or {})
        self.gradient_clip_val = gradient_clip_val
        self.accumulate_grad_batches = int(accumulate_grad_batches or 1)
        self.skip_bad_batches = int(skip_bad_batches or 0)
        self.bad_batches = 0
        if self.grad_cache:
            if loss_attr(loss, "needs_tokens"):
                raise ConfigError("trainer.grad_cache is not supported with loss=tsdae (it decodes token ids)")
            self.automatic_optimization = False

    def on_train_start(self) -> None:
        # from_pretrained returns models in eval mode and Lightning keeps modes as found: switch dropout on
        self.train()
        # trainer.deterministic=true keeps deterministic kernels, but by default also fills every new tensor with
        # NaN (a check for reads of uninitialised memory): ~10% of a CPU training step (docs/benchmarks.md)
        torch.utils.deterministic.fill_uninitialized_memory = False

    def sampling_seed(self) -> int:
        """The run's seed for per-step random choices (Matryoshka dims): the datamodule's `seed` (the config's
        `seed`), else Lightning's PL_GLOBAL_SEED, else 0. The same on every rank and after a resume."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        seed = getattr(dm, "seed", None)
        if seed is None:
            seed = os.environ.get("PL_GLOBAL_SEED", 0)
        return int(seed)

    def training_step(self, batch, batch_idx: int):
        begin_step = loss_attr(self.loss, "begin_step")
        if begin_step is not None:  # per-step choices (Matryoshka dims) keyed by the update, not by the call
            begin_step(self.global_step, self.sampling_seed())
        if self.grad_cache:
            loss = self._grad_cache_step(batch, batch_idx)
        else:
            loss = self.compute_loss(batch)
            if not self.check_finite(loss, batch_idx):
                return None  # skipped: Lightning runs no backward and no update for this batch
        if loss is None:
            return None
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["texts"][0]))
        return None if self.grad_cache else loss

    # ---------------------------------------------------------------- plain step
    def compute_loss(self, batch) -> torch.Tensor:
        features = batch["features"]
        labels = batch.get("labels")
        if loss_attr(self.loss, "needs_tokens"):
            # TSDAE: only the damaged column is encoded; the original's token ids are the decoder's target
            return self.loss([self.encoder(features[0])], labels, target_features=features[1])
        embeddings = [self.encoder(f) for f in features]
        return self._loss_on(embeddings, labels, self._extra(batch, embeddings[0].device))

    def _extra(self, batch, device) -> dict:
        """The loss's keyword arguments beyond the embeddings: guide embeddings (GIST), the teacher scores
        (distillation losses, `needs_teacher_scores`), the text and
        known-positive ids for known-positive masking (losses with `mask_known_positives`), and
        `in_batch_negatives=False` for a mixture source trained without in-batch negatives."""
        extra: dict = {}
        guide = loss_attr(self.loss, "guide")
        if guide is not None:
            extra["guide_embeddings"] = guide_embeddings(guide, batch["texts"], batch["kinds"], device)
        if loss_attr(self.loss, "needs_teacher_scores"):
            extra["teacher_scores"] = teacher_scores(batch).to(device)
        if loss_attr(self.loss, "mask_known_positives") and "known_ids" in batch:
            extra["text_ids"] = [t.to(device) for t in batch["text_ids"]]
            extra["known_ids"] = batch["known_ids"].to(device)
        if batch.get("in_batch_negatives") is False:
            maskable, loss = False, self.loss
            while loss is not None:  # the loss or the loss it wraps (Matryoshka) takes in_batch_negatives=
                maskable = maskable or hasattr(loss, "mask_known_positives")
                loss = getattr(loss, "loss", None)
            if not loss_attr(self.loss, "in_batch_negatives"):
                pass  # the loss has no in-batch negatives anyway
            elif not maskable:
                raise ConfigError(
                    f"data.train source {batch.get('source')}: in_batch_negatives=false, but "
                    f"loss={type(self.loss).__name__} cannot switch its in-batch negatives off; expected a loss "
                    "with known-positive masking (infonce, gist)"
                )
            else:
                extra["in_batch_negatives"] = False
        return extra

    def _loss_on(self, embeddings, labels, extra) -> torch.Tensor:
        """Loss of this rank; in-batch-negative losses score against every rank's rows."""
        if world()[1] == 1 or not loss_attr(self.loss, "in_batch_negatives"):
            return self.loss(embeddings, labels, **extra)
        rows = embeddings[0].shape[0]
        full = [gather(e) for e in embeddings]
        extra = gather_extra(extra)  # guide embeddings, text/known-positive ids: constants
        if loss_attr(self.loss, "supports_anchor_rows"):
            return self.loss(full, labels, anchor_rows=local_rows(rows), **extra)
        return self.loss(full, labels, **extra)  # the full-batch loss on every rank: still exact

    # ---------------------------------------------------------------- GradCache step
    def _grad_cache_step(self, batch, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        accumulate = self.accumulate_grad_batches
        # the same windows as Lightning's automatic path: every `accumulate` batches of the epoch, and the last
        # (possibly partial) window at the epoch's end
        is_update = (
            (batch_idx + 1) % accumulate == 0
            or self.trainer.is_last_batch
            or batch_idx + 1 >= self.trainer.num_training_batches
        )
        labels = batch.get("labels")
        extra = self._extra(batch, self.device)
        value = grad_cache_backward(
            encoder=self.encoder,
            column_features=batch["features"],
            chunk_size=int(self.grad_cache["chunk_size"]),
            loss_and_grads=lambda cols: loss_and_embedding_grads(
                self.loss,
                cols,
                labels,
                extra,
                in_batch_negatives=bool(loss_attr(self.loss, "in_batch_negatives")),
                supports_anchor_rows=bool(loss_attr(self.loss, "supports_anchor_rows")),
                anchor_chunk_size=self.grad_cache.get("anchor_chunk_size"),
            ),
            backward=lambda emb, grad: self.manual_backward(emb, gradient=grad),
            no_sync=self._no_sync,
            sync_last=is_update,
            grad_scale=1.0 / accumulate,
        )
        if not self.check_finite(value, batch_idx, grads=is_update):
            opt.zero_grad(set_to_none=True)
            return None
        if is_update:
            if self.gradient_clip_val:
                self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()
        return value

    def check_finite(self, loss: torch.Tensor, batch_idx: int, grads: bool = False) -> bool:
        """False for a NaN/inf loss (or gradient) to be skipped; NumericalError once more than
        `skip_bad_batches` were seen. All ranks agree (one all-reduce of a flag), so they stop together."""
        what = "loss" if not bool(torch.isfinite(loss.detach()).all()) else None
        if what is None and grads:
            norms = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
            if norms and not bool(torch.isfinite(torch.stack(norms).sum())):
                what = "gradient"
        if world()[1] > 1:
            flag = all_reduce_sum_(torch.tensor([0.0 if what is None else 1.0], device=loss.device))
            what = what or ("loss or gradient on another rank" if flag.item() > 0 else None)
        if what is None:
            return True
        self.bad_batches += 1
        # plain DDP steps cannot skip a backward safely: only single-process or GradCache runs skip
        allowed = self.skip_bad_batches if world()[1] == 1 or not self.automatic_optimization else 0
        where = f"global step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.bad_batches > allowed:
            ckpt = Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt" if self._trainer else None
            last = (
                f"last good checkpoint: {ckpt} (resume with ckpt_path=last)"
                if ckpt is not None and ckpt.is_file()
                else "no checkpoint was saved before it"
            )
            raise NumericalError(
                f"non-finite {what} (NaN/inf) at {where}, after {self.bad_batches - 1} skipped bad batch(es); {last}; "
                "expected finite values: lower trainer.lr, keep trainer.gradient_clip_val, use precision=32-true, "
                "or set trainer.skip_bad_batches=N to skip rare bad batches"
            )
        log.warning(
            "skipping batch with non-finite %s at %s (%d of trainer.skip_bad_batches=%d)",
            what,
            where,
            self.bad_batches,
            allowed,
        )
        return False

    def _no_sync(self):
        model = self.trainer.strategy.model if self._trainer is not None else None
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if any(n in name for n in NO_DECAY) else decay).append(p)
        # fused: one kernel over all tensors; on CPU the default per-tensor loop costs a large share of a small
        # model's step (docs/benchmarks.md)
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            fused=fused,
        )
        if fused:  # Lightning refuses to clip for optimisers that unscale inside step(); let a GradScaler unscale first
            optimizer._step_supports_amp_scaling = False
        total = planned_updates(self.trainer, 1 if self.automatic_optimization else self.accumulate_grad_batches)
        warmup = int(total * self.warmup_ratio)

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
