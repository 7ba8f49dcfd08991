"""Miners add negative columns to retrieval-shaped training data before training.

`miner=none` (the default) trains on the data's own columns; `miner=random` adds random corpus documents;
`miner=bm25`, `miner=dense` and `miner=cross_encoder` add hard negatives (see embedexp/miners/base.py for the
filters and the cache). Every miner has `mine(train_set, encoder=None) -> TrainSet`; `needs_encoder` says
whether it must be given the model being trained.
"""

from embedexp.miners.base import HardNegativeMiner
from embedexp.miners.bm25 import BM25Miner
from embedexp.miners.cross_encoder import CrossEncoderMiner
from embedexp.miners.dense import DenseMiner
from embedexp.miners.random_negatives import RandomNegativeMiner

__all__ = ["BM25Miner", "CrossEncoderMiner", "DenseMiner", "HardNegativeMiner", "RandomNegativeMiner"]
