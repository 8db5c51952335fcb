"""Datasets, splits and on-device batching."""

from genflow.data.batches import EpochBatches
from genflow.data.datasets import DataSplits, load_dataset

__all__ = ["DataSplits", "EpochBatches", "load_dataset"]
