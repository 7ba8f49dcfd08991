"""Lightning callback: evaluate the base model before training and the fine-tuned model after."""

from __future__ import annotations

import logging

import lightning as L

from embedexp.eval.evaluator import Evaluator

log = logging.getLogger(__name__)


class EvaluationCallback(L.Callback):
    """`base` may be filled before fit (e.g. from the cache, or before a pre-training stage)."""

    def __init__(self, evaluator: Evaluator, evaluate_base: bool = True) -> None:
        self.evaluator = evaluator
        self.evaluate_base = evaluate_base
        self.base: dict[str, float] = {}
        self.tuned: dict[str, float] = {}
        self.units: dict[str, dict] = {"base": {}, "tuned": {}}  # per-query / per-pair values (Evaluator.last_units)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.evaluate_base and not self.base:
            self.base = self.evaluator.evaluate(pl_module.encoder, use_cache=True)
            self.units["base"] = self.evaluator.last_units
            log.info("base model: %s", _fmt(self.base))
        if self.base and trainer.ckpt_path is None:  # also when filled before fit; a resumed run's curves have it
            _log(trainer, "base", self.base, step=0)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.tuned = self.evaluator.evaluate(pl_module.encoder)
            self.units["tuned"] = self.evaluator.last_units
            log.info("fine-tuned model: %s", _fmt(self.tuned))
            _log(trainer, "tuned", self.tuned, step=trainer.global_step)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _log(trainer: L.Trainer, prefix: str, metrics: dict[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()}, step=step)
