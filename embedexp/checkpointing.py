"""Checkpoints that resume a run exactly: weights, optimiser, schedule, loop position, data order and RNG.

`last.ckpt` is written to a temporary name and renamed, so a run killed while saving keeps the previous
checkpoint. On resume the sampler skips the batches the checkpoint already trained on and the RNG
states (dropout) are put back, so the resumed run matches an uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch

from embedexp.errors import ConfigError

log = logging.getLogger(__name__)
LAST = "last.ckpt"
# our sampler does resume mid-epoch (ResumableSampler.skip_batches); Lightning cannot see that
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def _rng_state() -> dict:
    # only tensors and plain Python values, so checkpoints load with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableCheckpoint(L.Callback):
    """Saves `<dirpath>/last.ckpt` every `every_n_steps` optimiser steps and when training ends.

    Only saves on optimiser-step boundaries (never in the middle of gradient accumulation), so the
    checkpoint never has to carry partial gradients.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = 100, datamodule=None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps or 0)
        self.datamodule = datamodule  # told where to resume, so its sampler skips the trained batches
        self._last_saved_step = -1
        self._position = (0, 0)  # (epoch, batches done in it) at the moment of saving
        self._pending_rng: dict | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def _save(self, trainer: L.Trainer, epoch: int, batches_done: int) -> None:
        self._position = (epoch, batches_done)
        self._rng = _rng_state()
        tmp = self.dirpath / f".{LAST}.tmp"
        trainer.save_checkpoint(tmp)  # every rank must call it; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("embedexp_checkpoint")
        self._last_saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > self._last_saved_step and step % self.every_n_steps == 0 and step > 0:
            self._save(trainer, trainer.current_epoch, batch_idx + 1)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_saved_step:
            # a finished run: resuming it goes straight to export and evaluation
            self._save(trainer, trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def state_dict(self) -> dict:
        return {"position": list(self._position), "rng": getattr(self, "_rng", None)}

    def load_state_dict(self, state: dict) -> None:
        epoch, done = state.get("position", (0, 0))
        if self.datamodule is not None:  # its sampler is built later, when Lightning asks for the loader
            self.datamodule.resume_at(epoch, done)
        self._pending_rng = state.get("rng")
        log.info("resuming at epoch %d after %d batches of it", epoch, done)

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending_rng is not None:  # last, so nothing between here and the next batch draws from them
            _set_rng_state(self._pending_rng)
            self._pending_rng = None


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """`last` -> `<checkpoint_dir>/last.ckpt` if it exists (else a fresh start); a folder -> its last.ckpt.

    Under a SLURM requeue (SLURM_RESTART_COUNT > 0) `null` behaves like `last`, so a preempted or timed
    out job continues where it stopped.
    """
    if ckpt_path is None and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        ckpt_path = "last"
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        path = checkpoint_dir / LAST
        if path.is_file():
            log.info("resuming from %s", path)
            return str(path)
        log.info("ckpt_path=last: no checkpoint in %s yet; starting from the beginning", checkpoint_dir)
        return None
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        for candidate in (path / LAST, path / "checkpoints" / LAST):
            if candidate.is_file():
                return str(candidate)
        raise ConfigError(f"ckpt_path={ckpt_path}: no {LAST} in that folder or its checkpoints/ subfolder")
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file; expected `last`, a .ckpt file or a run folder")
    return str(path)
