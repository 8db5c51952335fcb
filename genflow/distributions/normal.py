"""The standard normal base distribution of flows."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genflow.numeric import full_precision, sum_except_batch


class StandardNormal(nn.Module):
    """N(0, I) over a fixed event shape; ``sample`` scales the noise by ``temperature``."""

    def __init__(self, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        z = full_precision(z)
        return sum_except_batch(-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        anchor = self._device_anchor
        return temperature * torch.randn(
            n, *self.event_shape, device=anchor.device, dtype=anchor.dtype
        )
