"""Training curves that survive a resume and include the last step (`logger=csv`, `CurveKeeper`).

What `<run>/csv/metrics.csv` holds (one row per step, columns `step`, `epoch` and the metrics):

- `train/loss` every `trainer.log_every_n_steps` optimiser steps and always at the last step; Lightning's
  convention: the loss of optimiser step k (1-based) is in the row `step = k - 1`;
- `base/<set>/<metric>` at step 0 (the model before training) and `tuned/<set>/<metric>` at the final global
  step (the model that was exported), as in results.json;
- `dev/<set>/<metric>` at each dev evaluation when a dev set is used (data.dev_fraction > 0).

A resumed run (`ckpt_path=last`) continues the file instead of replacing it: the rows written before the kill
stay, the steps run again after the checkpoint are written once (the resumed run's values win), and the file
is rewritten in step order at the end. Lightning's own CSVLogger deletes the file when it starts.
"""

from __future__ import annotations

import csv
import logging
import math
import os

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


class _ContinuingWriter(_ExperimentWriter):
    """Lightning's CSV writer without the deletion of an existing metrics.csv when it starts."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # continue with the existing header
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` whose metrics.csv is continued by a resumed run (see module doc).

    Args: those of CSVLogger (`save_dir`, `name`, `version`, ...).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resumed: bool | None = None  # decided once, by `start`

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.log_dir, _ExperimentWriter.NAME_METRICS_FILE)

    @rank_zero_only
    def start(self, resumed: bool) -> None:
        """Called before anything is logged: a fresh run replaces an old metrics.csv, a resumed one keeps it.
        Only the first call counts (a two-stage run's second stage continues the file)."""
        if self.resumed is not None:
            return
        self.resumed = resumed
        if not resumed and os.path.isfile(self.metrics_path):
            log.warning("replacing %s of an earlier run in this folder", self.metrics_path)
            os.remove(self.metrics_path)
            self.experiment.metrics_keys = []
        if resumed and os.path.isfile(self.metrics_path):
            log.info("continuing %s", self.metrics_path)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self.resumed:
            merge_rows_by_step(self.metrics_path)


def merge_rows_by_step(path: str) -> int:
    """Rewrite a metrics CSV with one row per step, in step order; for a step written more than once, each
    column keeps its last non-empty value. Returns the number of rows."""
    if not os.path.isfile(path):
        return 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    merged: dict[int, dict[str, str]] = {}
    for row in rows:
        try:
            step = int(float(row["step"]))
        except (KeyError, TypeError, ValueError):
            continue
        target = merged.setdefault(step, {})
        target.update({k: v for k, v in row.items() if v not in (None, "")})
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(merged[s] for s in sorted(merged))
    os.replace(tmp, path)
    return len(merged)


def _last_loss(trainer, outputs) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if loss is None:
        loss = trainer.callback_metrics.get("train/loss")
    try:
        value = float(loss)
    except (TypeError, ValueError, RuntimeError):
        return None
    return value if math.isfinite(value) else None


class CurveKeeper(Callback):
    """Starts `ResumableCSVLogger`s (fresh or continued; put it before callbacks that log in on_fit_start) and logs the last step's `train/loss` when
    `trainer.log_every_n_steps` did not fall on it, so a run shorter than that still has a loss curve."""

    def __init__(self) -> None:
        self._loss: float | None = None
        self._epoch = 0

    def on_fit_start(self, trainer, pl_module) -> None:  # trainer.ckpt_path is known from here on
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.start(resumed=trainer.ckpt_path is not None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._loss, self._epoch = _last_loss(trainer, outputs), trainer.current_epoch

    def on_train_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        every = trainer.log_every_n_steps
        if self._loss is None or step == 0 or trainer.should_stop or (every and step % every == 0):
            return  # Lightning logged this step itself (or nothing ran)
        for logger in trainer.loggers:
            logger.log_metrics({"train/loss": self._loss, "epoch": self._epoch}, step=step - 1)
            logger.save()
