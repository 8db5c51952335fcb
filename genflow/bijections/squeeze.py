"""Space-to-depth reshaping for multi-scale image flows."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from genflow.bijections.base import Bijection, zeros_logdet


class Squeeze(Bijection):
    """(C, H, W) -> (4C, H/2, W/2), a permutation of the entries, so the log-det is 0.

    References: Dinh et al., 2017, arXiv:1605.08803 (section 3.6).
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"Squeeze needs H and W divisible by {self.factor}, got {tuple(x.shape)}"
            )
        return F.pixel_unshuffle(x, self.factor), zeros_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return F.pixel_shuffle(y, self.factor), zeros_logdet(y)
