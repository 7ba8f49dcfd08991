"""Training progress as plain log lines (`step 120/800 loss=0.4312 lr=1.9e-05 eta=3m12s`) for logs that are
not a terminal; see embedexp/progress.py for the settings. A `ProgressBar` subclass, so Lightning adds no
bar of its own beside it."""

from __future__ import annotations

import math
import time

from lightning.pytorch.callbacks import Callback, ProgressBar

from embedexp.progress import SETTINGS, format_duration, log


def _loss_value(outputs) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    try:
        return float(loss)
    except (TypeError, ValueError, RuntimeError):
        return None


class LineProgressBar(ProgressBar):
    """Logs one line every `every_n_steps` optimiser steps or `every_s` seconds (the first and last step always).

    eta: the remaining steps at the mean time per step of this run (resumed runs: since the resume);
    `lr`: the first parameter group's learning rate after the step; `loss`: the last batch's training loss.
    """

    def __init__(self, every_n_steps: int | None = None, every_s: float | None = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps or SETTINGS.every_n_steps
        self.every_s = every_s or SETTINGS.every_s
        self._enabled = True
        self._t0 = self._last_t = 0.0
        self._start_step = self._last_step = 0
        self._loss: float | None = None

    # ProgressBar's interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_disabled(self) -> bool:
        return not self._enabled or not self.trainer.is_global_zero

    def print(self, *args, sep: str = " ", **kwargs) -> None:
        log.info(sep.join(map(str, args)))

    def _total(self) -> float:
        total = self.trainer.estimated_stepping_batches
        return total if total and math.isfinite(total) else float("inf")

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last_t = time.monotonic()
        self._start_step = self._last_step = trainer.global_step
        if self._start_step and not self.is_disabled:
            log.info("resumed at step %d/%s", self._start_step, _fmt_total(self._total()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = _loss_value(outputs)
        if loss is not None:
            self._loss = loss
        step = trainer.global_step
        if self.is_disabled or step == self._last_step:  # accumulating, or a skipped batch
            return
        total = self._total()
        now = time.monotonic()
        if (
            step == self._start_step + 1
            or step - self._last_step >= self.every_n_steps
            or now - self._last_t >= self.every_s
            or step >= total
        ):
            self._line(step, total, now)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.is_disabled:
            if trainer.global_step != self._last_step:
                self._line(trainer.global_step, self._total(), time.monotonic())
            log.info(
                "training done: %d steps in %s",
                trainer.global_step,
                format_duration(time.monotonic() - self._t0),
            )

    def _line(self, step: int, total: float, now: float) -> None:
        done = step - self._start_step
        eta = (now - self._t0) / done * (total - step) if done > 0 and math.isfinite(total) else float("nan")
        parts = [f"step {step}/{_fmt_total(total)}"]
        if self._loss is not None:
            parts.append(f"loss={self._loss:.4f}")
        optimizers = self.trainer.optimizers
        if optimizers:
            parts.append(f"lr={optimizers[0].param_groups[0]['lr']:.2g}")
        parts.append(f"eta={format_duration(eta)}")
        log.info(" ".join(parts))
        self._last_step, self._last_t = step, now


def _fmt_total(total: float) -> str:
    return str(int(total)) if math.isfinite(total) else "?"


class FinishBars(Callback):
    """Stops a live (rich) training bar when training ends, before the final evaluation logs and the results
    table: otherwise the bar keeps redrawing itself below (or over) what is printed after it."""

    def on_train_end(self, trainer, pl_module) -> None:
        bar = trainer.progress_bar_callback
        stop = getattr(bar, "_stop_progress", None)  # RichProgressBar; tqdm's bar closes itself here
        if callable(stop):
            stop()
