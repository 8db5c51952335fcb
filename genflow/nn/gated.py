"""Gated layers, h = a * sigmoid(g), as in the encoders and decoders of the Sylvester flow code.

References: Dauphin et al., 2017, "Language Modeling with Gated Convolutional Networks",
arXiv:1612.08083; van den Berg et al., 2018, arXiv:1803.05649 (their VAE networks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.linear(x).chunk(2, dim=1)
        return a * torch.sigmoid(g)


class GatedConv2d(nn.Module):
    """A gated convolution; ``transpose`` makes it a gated transposed convolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        transpose: bool = False,
    ):
        super().__init__()
        if transpose:
            self.conv = nn.ConvTranspose2d(
                in_channels, 2 * out_channels, kernel_size, stride, padding, output_padding
            )
        else:
            self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.conv(x).chunk(2, dim=1)
        return a * torch.sigmoid(g)
