"""The `trainer` config group: optimiser and Lightning Trainer settings, checked before a run starts."""
