"""Training data: readers, train sets, the DataModule (imported lazily: config checks need no Lightning)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EmbeddingDataModule": "embedexp.data.datamodule",
    "ColumnCollator": "embedexp.data.datamodule",
    "TrainSet": "embedexp.data.train_sets",
    "build_train_set": "embedexp.data.train_sets",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embedexp.data' has no attribute {name!r}")
