"""Batches drawn from a tensor that already sits on the training device."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from genflow.errors import GenflowError


class EpochOrder:
    """Which examples global micro-batch j holds: slice j mod steps_per_epoch of the
    permutation of epoch j // steps_per_epoch, seeded with (seed, epoch), the last incomplete
    batch of each epoch dropped. A pure function of (seed, j), shared by the in-memory and
    the streamed batches, so both draw the same examples and a resume needs no loader state.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str = "cpu"):
        if batch_size < 1:
            raise GenflowError(f"trainer.batch_size must be a positive integer, got {batch_size}")
        if batch_size > n:
            raise GenflowError(
                f"trainer.batch_size={batch_size} is larger than the training split ({n} examples)"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.device = device  # where the permutation is kept (the data's device)
        self.steps_per_epoch = n // batch_size
        self._epoch = -1
        self._perm: Tensor | None = None

    def permutation(self, epoch: int) -> Tensor:
        """Epoch ``epoch``'s order of the n examples (the latest one is kept, on ``device``)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=generator).to(self.device)
            self._epoch = epoch
        return self._perm

    def positions(self, j: int) -> Tensor:
        """The positions of micro-batch ``j``'s examples."""
        epoch, i = divmod(j, self.steps_per_epoch)
        return self.permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]


class EpochBatches:
    """Shuffled fixed-size batches of a tensor, a pure function of (seed, step): the examples
    of step j are ``EpochOrder``'s, so resuming at any step draws exactly the batches an
    uninterrupted run would: no loader state to save. ``transform`` (e.g. dynamic
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
        if labels is not None and len(labels) != len(data):
            raise GenflowError(f"{len(labels)} labels for {len(data)} training examples")
        self.order = EpochOrder(len(data), batch_size, seed, data.device)
        self.data = data
        self.labels = labels
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = self.order.steps_per_epoch

    def __call__(self, step: int) -> Tensor:
        return self.labeled(step)[0]

    def labeled(self, step: int) -> tuple[Tensor, Tensor | None]:
        """The batch of ``step`` and its labels (None without ``labels``)."""
        index = self.order.positions(step)
        batch = self.data[index]
        batch = batch if self.transform is None else self.transform(batch)
        return batch, None if self.labels is None else self.labels[index]

    def take_skipped(self) -> int:
        """Records left out of batches since the last call: none for a tensor in memory (a
        streamed dataset's batches count theirs)."""
        return 0

    def close(self) -> None:
        """Nothing to let go (a streamed dataset's batches stop their worker processes)."""
