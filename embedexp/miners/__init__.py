"""Hard-negative miners. `miner=none` (the default) trains on the data's own columns."""
