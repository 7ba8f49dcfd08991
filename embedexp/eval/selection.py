"""Model selection during training (dev set, best step, early stopping) and the interpolation guard at the end.

`ModelSelection` is a Lightning callback placed before `EvaluationCallback`, so the test sets are evaluated once,
on the model it selects:

1. Every `every_n_steps` optimiser steps (and at the last step) the dev set is evaluated; `dev/<metric>` curves go
   to the loggers; the weights of the step with the best `monitor` value (`mode` max or min) are kept (a CPU copy
   of the backbone). With `patience`, training stops after that many evaluations without improvement (the idea of
   Lightning's EarlyStopping; done here because our "validation" encodes a whole corpus, not batches). At the end of
   training the best step's weights are loaded.
2. With interpolation on, theta(alpha) = (1 - alpha) theta_base + alpha theta_selected is evaluated for each alpha on
   the dev set and the general sets, and the alpha with the best dev metric whose general metric dropped by at most
   `max_general_drop` is loaded (WiSE-FT, Wortsman et al. 2022, arXiv 2109.01903; see `embedexp.eval.interpolate`).

The selected weights are the ones the test sets see and the ones exported. The selection never looks at a test set
except the general sets the user names as the guard.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L

from embedexp.errors import ConfigError
from embedexp.eval import interpolate as ip
from embedexp.eval.evaluator import Evaluator

log = logging.getLogger(__name__)


class ModelSelection(L.Callback):
    """See the module docstring. `dev` / `general` are Evaluators of the dev set / the general sets (or None)."""

    def __init__(
        self,
        dev: Evaluator | None,
        monitor: str | None,
        mode: str = "max",
        every_n_steps: int | None = None,
        patience: int | None = None,
        general: Evaluator | None = None,
        general_metric: str | None = None,
        interpolate: bool = False,
        alphas=ip.DEFAULT_ALPHAS,
        max_general_drop: float = 0.01,
    ) -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"select.mode={mode!r}; expected max or min")
        if interpolate and dev is None:
            raise ConfigError("select.interpolate=true needs a dev set (data.dev_fraction > 0 or select.dev_set)")
        self.dev, self.general = dev, general
        self.monitor, self.mode = monitor, mode
        self.every_n_steps, self.patience = every_n_steps, patience
        self.general_metric = general_metric
        self.interpolate, self.alphas, self.max_general_drop = interpolate, tuple(alphas), max_general_drop
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_state: dict | None = None
        self.bad_evaluations = 0
        self.last_eval_step: int | None = None
        self.history: list[dict] = []
        self.base_state: dict | None = None
        self.report: dict[str, Any] = {}

    # ------------------------------------------------------------------ dev evaluation during training
    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def _evaluate_dev(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        metrics = self.dev.evaluate(pl_module.encoder)
        if self.monitor not in metrics:
            raise ConfigError(
                f"select.monitor={self.monitor!r} is not a dev metric; expected one of {', '.join(metrics)}"
            )
        for logger in trainer.loggers:
            logger.log_metrics({f"dev/{k}": v for k, v in metrics.items()}, step=step)
        value = float(metrics[self.monitor])
        self.history.append({"step": step, self.monitor: value})
        self.last_eval_step = step
        if self._better(value):
            self.best, self.best_step, self.bad_evaluations = value, step, 0
            self.best_state = ip.snapshot(pl_module.encoder.backbone)
        else:
            self.bad_evaluations += 1
        log.info("dev step %d: %s=%.4f (best %.4f at step %d)", step, self.monitor, value, self.best, self.best_step)
        if self.patience and self.bad_evaluations >= self.patience:
            log.info("early stopping: %d dev evaluations without improvement", self.bad_evaluations)
            trainer.should_stop = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 and (self.dev is not None or self.interpolate):
            raise ConfigError(
                "select: dev-set selection and interpolation run in one process; expected trainer.devices=1 "
                "(select them off under DDP)"
            )
        if self.interpolate and self.base_state is None:
            self.base_state = ip.snapshot(pl_module.encoder.backbone)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.dev is not None and self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            if step != self.last_eval_step:
                self._evaluate_dev(trainer, pl_module)

    # ------------------------------------------------------------------ at the end: best step, then interpolation
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        encoder = pl_module.encoder
        if self.dev is not None and trainer.global_step != self.last_eval_step:
            self._evaluate_dev(trainer, pl_module)
        if self.dev is not None:
            if self.best_state is not None and self.best_step != trainer.global_step:
                encoder.backbone.load_state_dict(self.best_state)
                log.info("selected step %d by dev %s=%.4f", self.best_step, self.monitor, self.best)
            self.report["selection"] = {
                "monitor": self.monitor,
                "mode": self.mode,
                "best": self.best,
                "best_step": self.best_step,
                "last_step": trainer.global_step,
                "history": self.history,
            }
        if self.interpolate:
            evaluators = [e for e in (self.dev, self.general) if e is not None]
            rows = ip.sweep(
                encoder,
                self.base_state,
                None,
                self.alphas,
                lambda e: {k: v for ev in evaluators for k, v in ev.evaluate(e, use_cache=True).items()},
            )
            chosen = ip.choose(rows, self.monitor, self.general_metric, self.max_general_drop)
            tuned = ip.snapshot(encoder.backbone)
            ip.load_interpolated(encoder.backbone, self.base_state, tuned, chosen["alpha"])
            log.info("interpolation: alpha=%s (%s)", chosen["alpha"], chosen["reason"])
            self.report["interpolation"] = {"rows": rows, "chosen": {k: v for k, v in chosen.items() if k != "row"}}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "best_state": self.best_state,
            "bad_evaluations": self.bad_evaluations,
            "last_eval_step": self.last_eval_step,
            "history": self.history,
            "base_state": self.base_state,
        }

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
