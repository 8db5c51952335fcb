"""Glow: multi-scale flow of ActNorm, invertible 1x1 convolution and affine coupling.

References: Kingma & Dhariwal, 2018, "Glow: Generative Flow with Invertible 1x1
Convolutions", arXiv:1807.03039.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genflow.bijections.actnorm import ActNorm
from genflow.bijections.base import Bijection, Compose, Inverted
from genflow.bijections.conv1x1 import InvertibleConv1x1
from genflow.bijections.coupling import ChannelCoupling
from genflow.bijections.factor_out import FactorOut
from genflow.bijections.squeeze import Squeeze
from genflow.models.flow import FlowModel
from genflow.nn.conv_net import ConvNet, zero_conv

# channels -> the coupling of one step of flow on that many channels
CouplingFactory = Callable[[int], Bijection]


def glow_step(
    channels: int,
    hidden_channels: int,
    additive: bool,
    dropout: float,
    zero_logscale: float = 0.0,
    hidden_actnorm: bool = False,
    coupling: CouplingFactory | None = None,
) -> list[Bijection]:
    """One step of flow: ActNorm, invertible 1x1 conv, coupling (``coupling(channels)`` when
    given: the neural spline flow's image model puts a spline coupling there)."""
    if coupling is not None:
        return [ActNorm(channels), InvertibleConv1x1(channels), coupling(channels)]
    half, rest = channels // 2, channels - channels // 2
    out = rest if additive else 2 * rest
    return [
        ActNorm(channels),
        InvertibleConv1x1(channels),
        ChannelCoupling(
            channels,
            ConvNet(half, out, hidden_channels, dropout, zero_logscale, hidden_actnorm),
            "additive" if additive else "sigmoid",
        ),
    ]


def glow_flow(
    shape: tuple[int, int, int],
    num_levels: int,
    steps_per_level: int,
    hidden_channels: int,
    additive: bool = False,
    dropout: float = 0.0,
    zero_logscale: float = 0.0,
    hidden_actnorm: bool = False,
    coupling: CouplingFactory | None = None,
) -> Bijection:
    """Squeeze, K steps, then (below the top level) a learned prior on half the channels,
    which leave the flow while the rest go on to the next level. The output has the input's
    shape, so the base is a standard normal over the whole image. ``zero_logscale`` > 0 gives
    every zero-initialised convolution (couplings and split priors) Glow's learned output
    log-scale with that factor (the paper's code: 3); ``hidden_actnorm`` puts an ActNorm after
    each hidden convolution of the couplings' networks (the paper's code)."""
    c, h, w = shape
    if h % 2 or w % 2:
        raise ValueError(f"Glow needs even height and width at every level; got {shape}")
    c, h, w = 4 * c, h // 2, w // 2
    layers: list[Bijection] = [Squeeze()]
    for _ in range(steps_per_level):
        layers += glow_step(
            c, hidden_channels, additive, dropout, zero_logscale, hidden_actnorm, coupling
        )
    if num_levels > 1:
        out, rest = c // 2, c - c // 2
        # the factored-out half z ~ N(mu(h), sigma(h)^2), written as z -> (z - mu) / sigma
        prior = zero_conv(rest, 2 * out, zero_logscale)
        layers.append(ChannelCoupling(c, prior, "exp", condition_on_second=True))
        inner = glow_flow(
            (rest, h, w),
            num_levels - 1,
            steps_per_level,
            hidden_channels,
            additive,
            dropout,
            zero_logscale,
            hidden_actnorm,
            coupling,
        )
        layers.append(FactorOut(inner, split=out))
    layers.append(Inverted(Squeeze()))
    return Compose(layers)


class Glow(FlowModel):
    """Glow preset: ``num_levels`` levels of ``steps_per_level`` steps; additive coupling option."""

    image_only = True

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        logit_alpha: float | None = 0.05,
        num_levels: int = 2,
        steps_per_level: int = 8,
        hidden_channels: int = 128,
        additive: bool = False,
        dropout: float = 0.0,
        zero_logscale: float = 0.0,
        hidden_actnorm: bool = False,
        **flow_options: Any,
    ):
        event_shape = tuple(event_shape)
        if len(event_shape) != 3:
            raise ValueError(
                f"Glow models images (C, H, W); got event shape {event_shape} (try model=realnvp or maf)"
            )
        flow = glow_flow(
            event_shape,
            num_levels,
            steps_per_level,
            hidden_channels,
            additive,
            dropout,
            zero_logscale,
            hidden_actnorm,
        )
        super().__init__(flow, event_shape, levels, logit_alpha, **flow_options)
