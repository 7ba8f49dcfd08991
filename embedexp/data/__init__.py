from embedexp.data.datamodule import ColumnCollator, EmbeddingDataModule
from embedexp.data.train_sets import TrainSet, build_train_set

__all__ = ["EmbeddingDataModule", "ColumnCollator", "TrainSet", "build_train_set"]
