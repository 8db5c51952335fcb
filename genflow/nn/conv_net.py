"""Glow's coupling network: conv 3x3, conv 1x1, zero-initialised conv 3x3."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.bijections.actnorm import DataInitialized


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


class ActNormConv2d(DataInitialized, nn.Conv2d):
    """A bias-free convolution followed by ActNorm, y = (conv(x) + b) * exp(logs) per output
    channel, computed as one convolution with weight W * exp(logs) and bias b * exp(logs):
    the same function and gradients at no extra pass over the activations. The first
    training batch sets b and logs so that each output channel has zero mean and unit
    variance (Glow's data-dependent initialisation), once (:class:`DataInitialized`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.actnorm_bias = nn.Parameter(torch.zeros(out_channels))
        self.actnorm_logs = nn.Parameter(torch.zeros(out_channels))

    def _initialize(self, x: Tensor) -> None:
        out = F.conv2d(x, self.weight, None, self.stride, self.padding)
        self.actnorm_bias.copy_(-out.mean((0, 2, 3)))
        self.actnorm_logs.copy_(-torch.log(out.std((0, 2, 3)) + 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        self._initialize_once(x)
        scale = torch.exp(self.actnorm_logs)
        weight = self.weight * scale.view(-1, 1, 1, 1)
        return F.conv2d(x, weight, self.actnorm_bias * scale, self.stride, self.padding)


class ConvNet(nn.Module):
    """in -> 3x3 -> ReLU -> 1x1 -> ReLU -> 3x3 (zero-initialised) -> out.

    The zero last layer makes the coupling it drives start as the identity; with
    ``zero_logscale`` > 0 it is Glow's Conv2dZeros (:class:`ZeroConv`). With ``actnorm`` the
    two hidden convolutions are bias-free and each followed by an ActNorm with data-dependent
    initialisation, as in the paper's code (conv -> actnorm -> ReLU), folded into the
    convolution (:class:`ActNormConv2d`).
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

        conv = ActNormConv2d if actnorm else nn.Conv2d
        self.net = nn.Sequential(
            conv(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            conv(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            ZeroConv(hidden_channels, out_channels, zero_logscale),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def zero_conv(in_channels: int, out_channels: int, zero_logscale: float = 0.0) -> ZeroConv:
    """A 3x3 convolution that starts at zero (Glow's learned split prior)."""
    return ZeroConv(in_channels, out_channels, zero_logscale)
