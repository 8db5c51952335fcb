"""Glow's coupling network: conv 3x3, conv 1x1, zero-initialised conv 3x3."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ZeroConv(nn.Conv2d):
    """A 3x3 convolution that starts at zero, its output times exp(factor * logs) with a
    learned per-channel ``logs`` (zero at the start): Glow's Conv2dZeros, whose log-scale
    factor of 3 lets the output's size grow faster than its weights can under Adam.
    ``factor=0`` is the plain convolution (no extra parameter; the state dict of earlier
    genflow versions)."""

    def __init__(self, in_channels: int, out_channels: int, factor: float = 0.0):
        super().__init__(in_channels, out_channels, 3, padding=1)
        if factor < 0:
            raise ValueError(f"model.zero_logscale must be >= 0, got {factor}")
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.factor = float(factor)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1)) if factor > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if self.logs is None:
            return out
        return out * torch.exp(self.factor * self.logs)


class HiddenActNorm(nn.Module):
    """ActNorm on hidden features (its log-determinant unused): per-channel bias and scale
    set by the first training batch to zero mean and unit variance, then learned."""

    def __init__(self, channels: int):
        super().__init__()
        from genflow.bijections.actnorm import ActNorm

        self.norm = ActNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)[0]


class ConvNet(nn.Module):
    """in -> 3x3 -> ReLU -> 1x1 -> ReLU -> 3x3 (zero-initialised) -> out.

    The zero last layer makes the coupling it drives start as the identity; with
    ``zero_logscale`` > 0 it is Glow's Conv2dZeros (:class:`ZeroConv`). With ``actnorm`` the
    two hidden convolutions lose their bias and are each followed by an ActNorm with
    data-dependent initialisation, as in the paper's code (conv -> actnorm -> ReLU).
    References: Kingma & Dhariwal, 2018, arXiv:1807.03039 (section 3.3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        dropout: float = 0.0,
        zero_logscale: float = 0.0,
        actnorm: bool = False,
    ):
        super().__init__()

        def norm() -> nn.Module:
            return HiddenActNorm(hidden_channels) if actnorm else nn.Identity()

        bias = not actnorm  # ActNorm's bias replaces the convolution's
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=bias),
            norm(),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1, bias=bias),
            norm(),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            ZeroConv(hidden_channels, out_channels, zero_logscale),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def zero_conv(in_channels: int, out_channels: int, zero_logscale: float = 0.0) -> ZeroConv:
    """A 3x3 convolution that starts at zero (Glow's learned split prior)."""
    return ZeroConv(in_channels, out_channels, zero_logscale)
