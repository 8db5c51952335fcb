"""Batches drawn from a tensor that already sits on the training device."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from genflow.errors import GenflowError


class EpochBatches:
    """Shuffled fixed-size batches, a pure function of (seed, step).

    The permutation of epoch e comes from a generator seeded with (seed, e), so resuming
    at any step draws exactly the batches an uninterrupted run would: no loader state to
    save. The last incomplete batch of each epoch is dropped. ``transform`` (e.g. dynamic
    binarization) is applied to each batch as it is drawn, with the global RNG, whose state
    checkpoints carry. With ``labels`` (one per example), ``labeled(step)`` also gives the
    batch's labels, for class-conditional models.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        seed: int,
        transform: Callable[[Tensor], Tensor] | None = None,
        labels: Tensor | None = None,
    ):
        if batch_size < 1:
            raise GenflowError(f"trainer.batch_size must be a positive integer, got {batch_size}")
        if batch_size > len(data):
            raise GenflowError(
                f"trainer.batch_size={batch_size} is larger than the training split ({len(data)} examples)"
            )
        if labels is not None and len(labels) != len(data):
            raise GenflowError(f"{len(labels)} labels for {len(data)} training examples")
        self.data = data
        self.labels = labels
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = len(data) // batch_size
        self._epoch = -1
        self._perm: Tensor | None = None

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.data), generator=generator).to(self.data.device)
            self._epoch = epoch
        return self._perm

    def __call__(self, step: int) -> Tensor:
        return self.labeled(step)[0]

    def labeled(self, step: int) -> tuple[Tensor, Tensor | None]:
        """The batch of ``step`` and its labels (None without ``labels``)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        index = self._permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        batch = self.data[index]
        batch = batch if self.transform is None else self.transform(batch)
        return batch, None if self.labels is None else self.labels[index]
