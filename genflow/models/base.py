"""The one interface every model family implements."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Output:
    """What ``GenerativeModel.forward`` returns: the loss to minimise and batch-mean metrics."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class GenerativeModel(nn.Module):
    """A generative model of data with event shape ``event_shape``.

    ``forward(x)`` is the training objective (so DDP and ``torch.compile`` see it);
    ``log_prob(x)`` is log p(x) in nats per example for the data as the dataset gives it
    (discrete levels for images); ``evaluate(x)`` returns per-example metrics for the
    evaluation protocol, summed over examples by the engine.
    """

    def __init__(self, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_dims = math.prod(self.event_shape)

    def forward(self, x: Tensor) -> Output:
        nll = -self.log_prob(x)
        bpd = self.bpd(nll)
        loss = bpd.mean()
        return Output(loss=loss, metrics={"nll": nll.mean().detach(), "bpd": bpd.mean().detach()})

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        """Per-example metrics (shape (B,) each); the engine sums them and divides by N."""
        nll = -self.log_prob(x)
        return {"nll": nll, "bpd": self.bpd(nll)}

    def bpd(self, nats: Tensor) -> Tensor:
        """Nats per example -> bits per dimension of the data."""
        return nats / (self.num_dims * math.log(2))

    def set_training_step(self, step: int) -> None:
        """The trainer calls this before every training step; schedules (KL warm-up) read it."""

    @torch.no_grad()
    def pictures(self, x: Tensor) -> dict[str, tuple[Tensor, int]]:
        """Extra image grids beside the samples, from a batch of validation data ``x``:
        name -> (images (N, C, H, W) in data units, images per row). None by default."""
        return {}

    @torch.no_grad()
    def initialize(self, batch: Tensor) -> None:
        """Data-dependent initialisation (ActNorm); done once, before any wrapper."""
