"""Invertible 1x1 convolution in LU form: a learned permutation of channels (or, on vectors,
the LU-parameterised linear layer of neural spline flows)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.bijections.base import Bijection


class InvertibleConv1x1(Bijection):
    """Data -> noise: y = W x at every pixel, W = P L (U + diag(sign * exp(log_s))).

    P is a fixed permutation, L unit lower triangular, U strictly upper triangular; the
    log-det is H * W * sum(log_s), O(C) instead of O(C^3). Starts at a random rotation
    (``identity_init``: at the identity). On
    vectors (B, C) it is the linear map y = W x with log-det sum(log_s), as the neural spline
    flows put between their splines ("LU linear").
    References: Kingma & Dhariwal, 2018, "Glow", arXiv:1807.03039 (section 3.2); Durkan et al.,
    2019, arXiv:1906.04032.
    """

    def __init__(self, channels: int, identity_init: bool = False):
        super().__init__()
        # a random rotation (Glow's start), or the identity (the NSF paper's tabular models)
        q = (
            torch.eye(channels)
            if identity_init
            else torch.linalg.qr(torch.randn(channels, channels))[0]
        )
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def weight(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        if x.dim() == 2:
            return F.linear(x, w)
        return F.conv2d(x, w.view(*w.shape, 1, 1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = self.log_s.sum() * math.prod(x.shape[2:])
        return self._conv(x, self.weight()), logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = -self.log_s.sum() * math.prod(y.shape[2:])
        return self._conv(y, torch.linalg.inv(self.weight())), logdet.expand(y.shape[0])
