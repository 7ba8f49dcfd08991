"""Checkpoints that resume a run exactly: weights, optimiser, schedule, loop position, data order and RNG.

`last.ckpt` is written to a temporary name and renamed, so a run killed while saving keeps the previous
checkpoint. On resume the sampler skips the batches the checkpoint already trained on and the RNG
states (dropout) are put back, so the resumed run matches an uninterrupted one bit for bit on CPU.

The position (epoch, batches done) only means something for the data order it was counted in, so the
checkpoint also records what that order depends on: `data.batch_size`, `seed`, `data.shuffle`,
`data.drop_last`, the world size and a fingerprint of the training rows (miner output included). Resuming
with any of them changed is a one-line ConfigError naming both values (`check_resume_data` runs it before
the base evaluation; the checkpoint callback runs it again inside `fit`, where the world size is known).
A checkpoint without the record (saved by an older embedexp) resumes with a warning.
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


# what a data position depends on (EmbeddingDataModule.position_record) -> the name the user knows it by
RECORD_KEYS = {
    "batch_size": "data.batch_size",
    "seed": "seed",
    "shuffle": "data.shuffle",
    "drop_last": "data.drop_last",
    "world_size": "world size (trainer.devices x trainer.num_nodes)",
    "rows": "number of training rows (data.train, after mining)",
    "fingerprint": "training-data fingerprint (data.train texts, miner output)",
    "batch_sampler": "data.batch_sampler",
    "mixture": "training sources and data.mixture",
}
_warned_unrecorded: set[str] = set()


def compare_position_record(saved: dict | None, current: dict, ckpt: str, position=None) -> None:
    """Raise ConfigError if the data a checkpoint's position was counted in differs from this run's.

    `saved`/`current`: EmbeddingDataModule.position_record() dicts; keys missing from either side are not
    compared (the world size is unknown before the trainer exists). `saved=None` (an older checkpoint):
    one warning, then the resume goes ahead unchecked.
    """
    if saved is None:
        if ckpt not in _warned_unrecorded:
            _warned_unrecorded.add(ckpt)
            log.warning(
                "checkpoint %s has no record of the data position's inputs (saved by an older embedexp): cannot "
                "check that data.batch_size, seed, data.shuffle, data.drop_last, the world size and the training "
                "rows are unchanged; resuming anyway (if any changed, rows are retrained or skipped)",
                ckpt,
            )
        return
    diffs = [
        f"{name}={saved[key]!r} in the checkpoint but {current[key]!r} in this run"
        for key, name in RECORD_KEYS.items()
        if key in saved and key in current and saved[key] != current[key]
    ]
    if diffs:
        where = f" (epoch {position[0]}, {position[1]} batches done)" if position else ""
        raise ConfigError(
            f"ckpt_path={ckpt}: its data position{where} was counted in a different data order: {'; '.join(diffs)}; "
            "expected the checkpoint's values (resuming would retrain or skip rows), or start a fresh run "
            "(ckpt_path=null in a new hydra.run.dir)"
        )


def _callback_state(ckpt_path: str) -> dict | None:
    """ResumableCheckpoint's saved state in a Lightning checkpoint, read without loading tensors into memory."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # an unusual checkpoint: the check inside fit still runs
        log.debug("could not pre-read %s (%s); the data position is checked when fit loads it", ckpt_path, e)
        return None
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).split("{")[0] == ResumableCheckpoint.__qualname__:
            return state
    return {}


def check_resume_data(ckpt_path: str | None, datamodule, world_size: int | None = None) -> None:
    """Before any model work: ConfigError if `ckpt_path`'s data position does not fit `datamodule`.

    Call it once the rows are final (after mining), e.g. before the base evaluation, so a wrong resume fails in
    seconds. `world_size=None` leaves the world size to the check inside `fit`. No-op for `ckpt_path=None`
    or a checkpoint without a ResumableCheckpoint state; warns for one without a record (see module doc).
    """
    if ckpt_path is None:
        return
    state = _callback_state(str(ckpt_path))
    if not state:
        return
    current = datamodule.position_record(world_size or 1)
    if world_size is None:
        current.pop("world_size")
    compare_position_record(state.get("data"), current, str(ckpt_path), state.get("position"))


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
        self._world_size = 1  # set in setup(); recorded with the position
        self._ckpt_path: str | None = None  # the checkpoint fit resumes from (for error messages)

    @property
    def state_key(self) -> str:
        return type(self).__qualname__  # check_resume_data finds the state under this key

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._world_size = int(trainer.world_size)  # runs before Lightning restores the checkpoint
        self._ckpt_path = getattr(trainer, "ckpt_path", None)

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
        state = {"position": list(self._position), "rng": getattr(self, "_rng", None)}
        if self.datamodule is not None:  # what the position depends on, checked on resume
            state["data"] = self.datamodule.position_record(self._world_size)
        return state

    def load_state_dict(self, state: dict) -> None:
        epoch, done = state.get("position", (0, 0))
        if self.datamodule is not None:  # before anything trains: a changed data order is an error
            ckpt = str(self._ckpt_path or self.path)
            compare_position_record(
                state.get("data"), self.datamodule.position_record(self._world_size), ckpt, (epoch, done)
            )
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
        raise ConfigError(
            f"ckpt_path={ckpt_path}: no such checkpoint file; expected `last`, a .ckpt file or a run folder"
        )
    return str(path)
