"""Datasets, splits and on-device batching."""

from genflow.data.batches import EpochBatches, in_order
from genflow.data.datasets import DataSplits, load_dataset

__all__ = ["DataSplits", "EpochBatches", "in_order", "load_dataset"]
