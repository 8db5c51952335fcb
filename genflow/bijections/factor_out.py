"""Multi-scale factoring: half the channels leave the flow, the rest go through an inner flow."""

from __future__ import annotations

import torch
from torch import Tensor

from genflow.bijections.base import Bijection


class FactorOut(Bijection):
    """Keep the first ``split`` channels as latents; transform the others with ``inner``.

    The output has the input's shape, so a multi-scale flow is still one bijection
    whose output is the full latent tensor.
    References: Dinh et al., 2017, arXiv:1605.08803 (section 3.6).
    """

    def __init__(self, inner: Bijection, split: int):
        super().__init__()
        self.inner = inner
        self.split = split

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, h = x[:, : self.split], x[:, self.split :]
        h, logdet = self.inner(h, context)
        return torch.cat([z, h], dim=1), logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, h = y[:, : self.split], y[:, self.split :]
        h, logdet = self.inner.inverse(h, context)
        return torch.cat([z, h], dim=1), logdet
