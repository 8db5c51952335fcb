"""The logit transform used by RealNVP and Glow to move [0, 1) data onto the real line."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from genflow.bijections.base import Bijection
from genflow.numeric import sum_except_batch


class Logit(Bijection):
    """Data -> noise: y = logit(alpha + (1 - 2 alpha) x) for x in [0, 1].

    ``alpha`` keeps the result finite at the edges. The log-det counts the affine squeeze
    as well as the logit, so bpd computed through this layer is for the original x. With
    ``alpha=0`` the logit maps the open box (0, 1)^D onto all of R^D, so a flow's whole mass
    lies on the data; values that round to 0 or 1 (probability about 2^-24 per dequantized
    value in float32) are moved to the nearest representable inside value.
    References: Dinh et al., 2017, arXiv:1605.08803 (section 4.1).
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.alpha == 0.0:
            info = torch.finfo(x.dtype)
            x = x.clamp(info.tiny, 1.0 - info.eps / 2)
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        # d/dx logit(p) = (1 - 2 alpha) / (p (1 - p))
        ld = math.log(1.0 - 2.0 * self.alpha) - torch.log(p) - torch.log1p(-p)
        return y, sum_except_batch(ld)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = torch.sigmoid(y)
        x = (p - self.alpha) / (1.0 - 2.0 * self.alpha)
        # log sigmoid'(y) = -softplus(-y) - softplus(y)
        ld = -F.softplus(-y) - F.softplus(y) - math.log(1.0 - 2.0 * self.alpha)
        return x, sum_except_batch(ld)
