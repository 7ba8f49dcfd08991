"""Runs one real optimisation step of EmbeddingModule under Lightning (1 or 2 gloo processes) and
saves, per rank: the parameter gradients the optimiser sees, the batch, the RNG state at batch
start and the number of gradient all-reduce calls. Imported by spawned processes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

ALLREDUCE_CALLS = {"n": 0}


def counting_allreduce_hook(state, bucket):
    ALLREDUCE_CALLS["n"] += 1
    return default_hooks.allreduce_hook(None, bucket)


class CaptureStep(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.micro: list[dict] = []  # per micro-batch of the step: RNG state at its start, its features
        self.dims: list[tuple[int, ...]] = []  # Matryoshka: the dims of every loss call in the step

    def on_train_start(self, trainer, pl_module):
        # Lightning registers comm hooks only on CUDA; count the gloo all-reduce buckets ourselves
        if isinstance(trainer.strategy.model, torch.nn.parallel.DistributedDataParallel):
            trainer.strategy.model.register_comm_hook(None, counting_allreduce_hook)
        if hasattr(pl_module.loss, "last_dims"):
            pl_module.loss.register_forward_hook(lambda mod, args, out: self.dims.append(tuple(mod.last_dims)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        micro = {"rng": torch.get_rng_state(), "features": batch["features"]}
        if pl_module.device.type == "cuda":  # dropout on the GPU draws from the device's generator
            micro["cuda_rng"] = torch.cuda.get_rng_state(pl_module.device)
        self.micro.append(micro)
        ALLREDUCE_CALLS["n"] = 0  # counts the all-reduces of the step's last micro-batch (the synchronised one)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = {n: p.grad.detach().clone() for n, p in pl_module.encoder.named_parameters() if p.grad is not None}
        first = self.micro[0]
        torch.save(
            {
                "grads": grads,
                "rng": first["rng"],
                "features": first["features"],
                "micro": self.micro,
                "dims": self.dims,
                "allreduce": ALLREDUCE_CALLS["n"],
            },
            Path(self.out_dir) / f"rank{trainer.global_rank}.pt",
        )


def run_step(
    model_dir: str,
    rows: list[tuple[str, ...]],
    out_dir: str,
    devices: int,
    loss,
    batch_size: int,
    grad_cache_chunk: int | None = None,
    anchor_chunk: int | None = None,
    accumulate: int = 1,
    accelerator: str = "cpu",
) -> None:
    """One optimiser update over `accumulate` micro-batches of `batch_size` rows per rank (rows in order).
    accelerator="gpu": the same step on CUDA (NCCL between ranks; tests/test_distributed_cuda.py)."""
    from lightning.pytorch.strategies import DDPStrategy

    from embedexp.data import EmbeddingDataModule
    from embedexp.data.train_sets import TrainSet
    from embedexp.models import Encoder
    from embedexp.module import EmbeddingModule

    encoder = Encoder(model_dir, max_seq_length=32)
    n_cols = len(rows[0])
    dm = EmbeddingDataModule(train={"format": "beir", "root": "unused"}, batch_size=batch_size, shuffle=False)
    dm.set_train_set(
        TrainSet(
            ("anchor", "positive") + tuple(f"negative_{i + 1}" for i in range(n_cols - 2)),
            ("query",) + ("document",) * (n_cols - 1),
            rows,
        )
    )
    dm.set_tokenizer(encoder.tokenize)
    gc = {"chunk_size": grad_cache_chunk, "anchor_chunk_size": anchor_chunk} if grad_cache_chunk else None
    module = EmbeddingModule(
        encoder,
        loss,
        lr=1e-3,
        weight_decay=0.0,
        warmup_ratio=0.0,
        grad_cache=gc,
        accumulate_grad_batches=accumulate if gc else 1,
    )
    strategy = "auto"
    if devices > 1:
        backend = "nccl" if accelerator == "gpu" else "gloo"
        # CPU: fork (Lightning's ddp_fork) gives each rank this process's already-imported modules instead of a
        # fresh interpreter importing torch/Lightning/transformers again: tests/test_distributed.py's default
        # cases took 109 CPU s under spawn, 25 s under fork. CUDA cannot be re-initialised in a forked child,
        # so the GPU harness (tests/test_distributed_cuda.py) keeps spawn
        start = "spawn" if accelerator == "gpu" else "fork"
        strategy = DDPStrategy(start_method=start, find_unused_parameters=True, process_group_backend=backend)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[CaptureStep(out_dir)],
        use_distributed_sampler=True,
        accumulate_grad_batches=1 if gc else accumulate,
    )
    trainer.fit(module, datamodule=dm)
