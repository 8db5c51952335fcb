"""Autoregressive models over discrete values: exact log-likelihood, sequential sampling."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from genflow.models.base import GenerativeModel
from genflow.numeric import full_precision, sum_except_batch


def draw(logits: Tensor, temperature: float) -> Tensor:
    """One categorical draw per row by inverse CDF: exactly one uniform per row, so two
    samplers that compute the same logits in the same order draw the same values."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    u = torch.rand(probs.shape[0], 1, dtype=probs.dtype, device=probs.device)
    return (probs.cumsum(-1) < u).sum(-1).clamp_(max=probs.shape[-1] - 1)


class AutoregressiveModel(GenerativeModel):
    """log p(x) = sum_i log p(x_i | x_<i) with a categorical over ``levels`` values.

    The order is given by ``positions()``. Subclasses give ``logits(x)`` of shape
    (B, levels, *event_shape), where the logits at a position depend only on earlier ones.
    No dequantization: nll and bpd are exact.
    """

    discrete_only = True

    def __init__(self, event_shape: tuple[int, ...], levels: int):
        if levels is None or int(levels) < 2:
            raise ValueError(
                f"autoregressive models need discrete data with levels >= 2; got levels={levels}"
            )
        super().__init__(event_shape, levels)

    def scale(self, x: Tensor) -> Tensor:
        """Levels -> [-1, 1], the network's input."""
        return x.to(self.dtype) * (2.0 / (self.levels - 1)) - 1.0

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        log_probs = F.log_softmax(full_precision(self.logits(x)), dim=1)
        return sum_except_batch(log_probs.gather(1, x.long().unsqueeze(1)).squeeze(1))

    def positions(self) -> Iterator[tuple[int, ...]]:
        """Every index of the event, in the model's order: here the flattened (C-order)
        sequence; PixelCNN overrides it with raster order, then R, G, B within a pixel."""
        return itertools.product(*(range(s) for s in self.event_shape))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        return self.sample_naive(n, temperature)

    @torch.no_grad()
    def sample_naive(self, n: int, temperature: float = 1.0) -> Tensor:
        """Re-run the whole network once per position: the reference sampler."""
        device = next(self.parameters()).device
        x = torch.zeros(n, *self.event_shape, dtype=torch.long, device=device)
        for index in self.positions():
            logits = self.logits(x)[(slice(None), slice(None), *index)]
            x[(slice(None), *index)] = draw(logits, temperature)
        return x
