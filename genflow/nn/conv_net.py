"""Glow's coupling network: conv 3x3, conv 1x1, zero-initialised conv 3x3."""

from __future__ import annotations

from torch import Tensor, nn


class ConvNet(nn.Module):
    """in -> 3x3 -> ReLU -> 1x1 -> ReLU -> 3x3 (zero-initialised) -> out.

    The zero last layer makes the coupling it drives start as the identity.
    References: Kingma & Dhariwal, 2018, arXiv:1807.03039 (section 3.3).
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int = 64, dropout: float = 0.0
    ):
        super().__init__()
        output = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            output,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 convolution that starts at zero (Glow's learned split prior)."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv
