"""Flattening images into vectors for vector flows (NICE, MAF)."""

from __future__ import annotations

from torch import Tensor

from genflow.bijections.base import Bijection, zeros_logdet


class Flatten(Bijection):
    """(B, *event_shape) -> (B, D): a reshape, so the log-det is 0."""

    def __init__(self, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(event_shape)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], -1), zeros_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y.reshape(y.shape[0], *self.event_shape), zeros_logdet(y)
