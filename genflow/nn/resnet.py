"""A small convolutional ResNet, the conditioner of image coupling layers."""

from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def activation_layer(name: str) -> nn.Module:
    """``model.activation`` as a module: ``gelu`` or ``relu``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class ResidualBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(conv(act(x)))), with optional dropout."""

    def __init__(self, channels: int, dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        self.net = nn.Sequential(
            activation_layer(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
            activation_layer(activation),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ResNet(nn.Module):
    """Conv in, ``num_blocks`` residual blocks, conv out (zero-initialised by default).

    The input and output convolutions are 3x3, or 1x1 with ``io_kernel_size=1`` (nflows' and
    normflows' ConvResidualNet), the residual blocks 3x3. ``activation`` is ``gelu`` or ``relu``
    (nflows' and normflows').

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
        io_kernel_size: int = 3,
        activation: str = "gelu",
    ):
        super().__init__()
        if io_kernel_size not in (1, 3):
            raise ValueError(f"model.io_kernel_size must be 1 or 3, got {io_kernel_size}")
        pad = io_kernel_size // 2
        self.input = nn.Conv2d(in_channels, hidden_channels, io_kernel_size, padding=pad)
        self.blocks = nn.Sequential(
            *[ResidualBlock(hidden_channels, dropout, activation) for _ in range(num_blocks)]
        )
        self.output = nn.Sequential(
            activation_layer(activation),
            nn.Conv2d(hidden_channels, out_channels, io_kernel_size, padding=pad),
        )
        if zero_init_output:
            nn.init.zeros_(self.output[1].weight)
            nn.init.zeros_(self.output[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.blocks(self.input(x)))
