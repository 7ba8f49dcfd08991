"""Miners add negative columns to retrieval-shaped training data before training.
`miner=none` (the default) trains on the data's own columns."""

from embedexp.miners.random_negatives import RandomNegativeMiner

__all__ = ["RandomNegativeMiner"]
