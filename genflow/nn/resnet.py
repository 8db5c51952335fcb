"""A small convolutional ResNet, the conditioner of image coupling layers."""

from __future__ import annotations

from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(conv(act(x)))), with optional dropout."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ResNet(nn.Module):
    """Conv in, ``num_blocks`` residual blocks, conv out (zero-initialised by default).

    References: Dinh et al., 2017, arXiv:1605.08803 (appendix: ResNet coupling networks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        dropout: float = 0.0,
        zero_init_output: bool = True,
    ):
        super().__init__()
        self.input = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.blocks = nn.Sequential(
            *[ResidualBlock(hidden_channels, dropout) for _ in range(num_blocks)]
        )
        self.output = nn.Sequential(
            nn.GELU(), nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        )
        if zero_init_output:
            nn.init.zeros_(self.output[1].weight)
            nn.init.zeros_(self.output[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.blocks(self.input(x)))
