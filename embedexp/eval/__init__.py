"""Evaluation: metrics, statistics, results (imported lazily: config checks need no Lightning)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvaluationCallback": "embedexp.eval.callback",
    "Evaluator": "embedexp.eval.evaluator",
    "ir_metrics": "embedexp.eval.metrics",
    "retrieve": "embedexp.eval.metrics",
    "spearman": "embedexp.eval.metrics",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embedexp.eval' has no attribute {name!r}")
