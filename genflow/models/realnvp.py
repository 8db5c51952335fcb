"""RealNVP: affine coupling flows for vectors and multi-scale images.

References: Dinh et al., 2017, "Density estimation using Real NVP", arXiv:1605.08803.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from genflow.bijections.base import Bijection, Compose, Inverted
from genflow.bijections.coupling import (
    AffineCoupling,
    CheckerboardCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from genflow.bijections.elementwise import BatchNormFlow
from genflow.bijections.factor_out import FactorOut
from genflow.bijections.squeeze import Squeeze
from genflow.models.flow import FlowModel
from genflow.nn.context import embedded_width
from genflow.nn.mlp import MLP
from genflow.nn.resnet import ResNet


def _normed(layers: list[Bijection], features: int, batch_norm: bool) -> list[Bijection]:
    """The layers, each followed by a batch-normalisation bijection when ``batch_norm``."""
    if not batch_norm:
        return layers
    return [part for layer in layers for part in (layer, BatchNormFlow(features))]


def vector_flow(
    features: int,
    num_layers: int,
    hidden_features: int,
    hidden_layers: int,
    dropout: float,
    batch_norm: bool = False,
    context_features: int = 0,
) -> Bijection:
    """Affine couplings with alternating masks and MLP conditioners (which also read a
    context of ``context_features`` values, when there is one)."""
    layers: list[Bijection] = [
        AffineCoupling(
            alternating_mask(features, parity=i % 2),
            MLP(features + context_features, 2 * features, hidden_features, hidden_layers, dropout),
        )
        for i in range(num_layers)
    ]
    return Compose(_normed(layers, features, batch_norm))


CHECKERBOARDS = ("gathered", "masked")


Conditioner = Callable[[int, int], nn.Module]


def _checkerboard_coupling(
    shape: tuple[int, int, int], parity: int, checkerboard: str, net: Conditioner
) -> Bijection:
    """``gathered`` runs the conditioner on the fixed half only (an even width is needed;
    odd widths fall back to ``masked``, which runs it on the whole half-zeroed image)."""
    c, h, w = shape
    if checkerboard == "gathered" and w % 2 == 0:
        return CheckerboardCoupling(c, net(c + 1, 2 * c), parity)
    return AffineCoupling(checkerboard_mask(c, h, w, parity), net(c + 1, 2 * c), append_mask=True)


def multiscale_flow(
    shape: tuple[int, int, int],
    num_scales: int,
    hidden_channels: int,
    num_blocks: int,
    dropout: float,
    couplings_per_scale: int = 3,
    final_couplings: int = 4,
    checkerboard: str = "masked",
    batch_norm: bool = False,
    io_kernel: int = 3,
    activation: str = "gelu",
) -> Bijection:
    """One scale: checkerboard couplings, squeeze, channel couplings, factor out half, recurse.

    The last scale is ``final_couplings`` checkerboard couplings. The result maps an image
    to a latent of the same shape, so the base distribution and sampling stay simple.
    ``checkerboard`` is ``gathered`` (the conditioner sees the fixed half only, half the
    work) or ``masked`` (the conditioner runs on the whole half-zeroed image, as in the paper).
    ``batch_norm`` follows every coupling with a per-channel batch-normalisation bijection
    (the paper's section 3.7). Each conditioner is a ResNet of ``num_blocks`` blocks of
    ``hidden_channels``; ``io_kernel`` is the kernel of its first and last convolution (3, or
    1 as nflows' and normflows' ConvResidualNet), ``activation`` its nonlinearity.
    """
    if checkerboard not in CHECKERBOARDS:
        raise ValueError(
            f"unknown checkerboard '{checkerboard}'; valid: {', '.join(CHECKERBOARDS)}"
        )

    def net(in_channels: int, out_channels: int) -> nn.Module:
        return ResNet(
            in_channels,
            out_channels,
            hidden_channels,
            num_blocks,
            dropout,
            io_kernel_size=io_kernel,
            activation=activation,
        )

    return _scales(
        tuple(shape),
        num_scales,
        net,
        couplings_per_scale,
        final_couplings,
        checkerboard,
        batch_norm,
    )


def _scales(
    shape: tuple[int, int, int],
    num_scales: int,
    net: Conditioner,
    couplings_per_scale: int,
    final_couplings: int,
    checkerboard: str,
    batch_norm: bool,
) -> Bijection:
    c, h, w = shape

    def board(parity, size):
        return _checkerboard_coupling(size, parity, checkerboard, net)

    if num_scales <= 1 or h % 2 or w % 2:
        final = [board(i % 2, shape) for i in range(final_couplings)]
        return Compose(_normed(final, c, batch_norm))
    layers = _normed([board(i % 2, shape) for i in range(couplings_per_scale)], c, batch_norm)
    layers.append(Squeeze())
    c2, h2, w2 = 4 * c, h // 2, w // 2
    channel_couplings: list[Bijection] = [
        AffineCoupling(channel_mask(c2, h2, w2, i % 2), net(c2 + 1, 2 * c2), append_mask=True)
        for i in range(couplings_per_scale)
    ]
    layers += _normed(channel_couplings, c2, batch_norm)
    inner = _scales(
        (c2 - c2 // 2, h2, w2),
        num_scales - 1,
        net,
        couplings_per_scale,
        final_couplings,
        checkerboard,
        batch_norm,
    )
    layers.append(FactorOut(inner, split=c2 // 2))
    layers.append(Inverted(Squeeze()))
    return Compose(layers)


class RealNVP(FlowModel):
    """RealNVP preset: a multi-scale conv flow for images, an MLP coupling stack for vectors;
    ``batch_norm`` puts a batch-normalisation bijection after every coupling."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        logit_alpha: float | None = 0.05,
        num_scales: int = 2,
        couplings_per_scale: int = 3,
        final_couplings: int = 4,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        num_layers: int = 8,
        hidden_features: int = 256,
        hidden_layers: int = 2,
        dropout: float = 0.0,
        checkerboard: str = "masked",
        batch_norm: bool = False,
        io_kernel_size: int = 3,
        activation: str = "gelu",
        **flow_options: Any,
    ):
        if not isinstance(batch_norm, bool):
            raise ValueError(f"model.batch_norm must be true or false, got {batch_norm}")
        event_shape = tuple(event_shape)
        if len(event_shape) == 3:
            flow = multiscale_flow(
                event_shape,
                num_scales,
                hidden_channels,
                num_blocks,
                dropout,
                couplings_per_scale,
                final_couplings,
                checkerboard,
                batch_norm,
                io_kernel_size,
                activation,
            )
        elif len(event_shape) == 1:
            width = embedded_width(
                flow_options.get("context_features"), flow_options.get("context_net")
            )
            flow = vector_flow(
                event_shape[0],
                num_layers,
                hidden_features,
                hidden_layers,
                dropout,
                batch_norm,
                context_features=width,
            )
        else:
            raise ValueError(
                f"RealNVP takes vectors (D,) or images (C, H, W); got event shape {event_shape}"
            )
        # the multi-scale image flow takes a context in its base only
        super().__init__(
            flow,
            event_shape,
            levels,
            logit_alpha,
            flow_takes_context=len(event_shape) == 1,
            **flow_options,
        )
