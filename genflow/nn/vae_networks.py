"""Encoders x -> context and decoders z -> likelihood parameters of VAEs: MLP and conv, gated.

Data comes in laid out as images (B, C, H, W) (vectors as (B, 1, D, 1)). An encoder returns
the context h (B, hidden_features) that the VAE maps to q(z_0|x) and that amortised flow
posteriors read; a decoder returns (B, P, H, W) parameters for the likelihood.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from genflow.nn.gated import GatedConv2d, GatedLinear

NETWORKS = ("mlp", "conv")


def _gated_stack(in_features: int, hidden_features: int, num_layers: int, dropout: float):
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(num_layers):
        layers.append(GatedLinear(features, hidden_features))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        features = hidden_features
    return layers, features


class MLPEncoder(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        hidden_features: int,
        num_layers: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers, _ = _gated_stack(math.prod(image_shape), hidden_features, num_layers, dropout)
        self.net = nn.Sequential(nn.Flatten(), *layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    def __init__(
        self,
        latent_features: int,
        image_shape: tuple[int, int, int],
        out_channels: int,
        hidden_features: int,
        num_layers: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        _, h, w = image_shape
        layers, features = _gated_stack(latent_features, hidden_features, num_layers, dropout)
        layers += [nn.Linear(features, out_channels * h * w), nn.Unflatten(1, (out_channels, h, w))]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def check_conv_shape(image_shape: tuple[int, int, int]) -> None:
    _, h, w = image_shape
    if h % 4 or w % 4:
        raise ValueError(
            f"model.network=conv needs image height and width divisible by 4, got {h}x{w}; "
            "use model.network=mlp"
        )


class ConvEncoder(nn.Module):
    """Five gated 5x5 convolutions (two of stride 2: H/4 x W/4), then a gated linear layer."""

    def __init__(self, image_shape: tuple[int, int, int], hidden_features: int, channels: int = 32):
        super().__init__()
        check_conv_shape(image_shape)
        c, h, w = image_shape
        wide = 2 * channels
        self.net = nn.Sequential(
            GatedConv2d(c, channels, 5, 1, 2),
            GatedConv2d(channels, channels, 5, 2, 2),
            GatedConv2d(channels, wide, 5, 1, 2),
            GatedConv2d(wide, wide, 5, 2, 2),
            GatedConv2d(wide, wide, 5, 1, 2),
            nn.Flatten(),
            GatedLinear(wide * (h // 4) * (w // 4), hidden_features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """A gated linear layer to (2*channels, H/4, W/4), gated (transposed) convolutions up to
    H x W, then a 1x1 convolution to the likelihood parameters."""

    def __init__(
        self,
        latent_features: int,
        image_shape: tuple[int, int, int],
        out_channels: int,
        channels: int = 32,
    ):
        super().__init__()
        check_conv_shape(image_shape)
        _, h, w = image_shape
        wide = 2 * channels
        self.net = nn.Sequential(
            GatedLinear(latent_features, wide * (h // 4) * (w // 4)),
            nn.Unflatten(1, (wide, h // 4, w // 4)),
            GatedConv2d(wide, wide, 5, 1, 2),
            GatedConv2d(wide, channels, 5, 2, 2, output_padding=1, transpose=True),
            GatedConv2d(channels, channels, 5, 1, 2),
            GatedConv2d(channels, channels, 5, 2, 2, output_padding=1, transpose=True),
            GatedConv2d(channels, channels, 5, 1, 2),
            nn.Conv2d(channels, out_channels, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def check_network(network: str, image_shape: tuple[int, int, int]) -> None:
    """A known network that fits the data: what build_networks needs, without building."""
    if network not in NETWORKS:
        raise ValueError(f"model.network={network} is not a network; valid: {', '.join(NETWORKS)}")
    if network == "conv":
        check_conv_shape(image_shape)


def build_networks(
    network: str,
    image_shape: tuple[int, int, int],
    latent_features: int,
    out_channels: int,
    hidden_features: int,
    num_layers: int = 2,
    channels: int = 32,
    dropout: float = 0.0,
) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for ``network`` = mlp or conv; ``dropout`` after each gated layer
    of the MLPs (small datasets such as digits overfit without it)."""
    check_network(network, image_shape)
    if network == "mlp":
        return (
            MLPEncoder(image_shape, hidden_features, num_layers, dropout),
            MLPDecoder(
                latent_features, image_shape, out_channels, hidden_features, num_layers, dropout
            ),
        )
    return (
        ConvEncoder(image_shape, hidden_features, channels),
        ConvDecoder(latent_features, image_shape, out_channels, channels),
    )
