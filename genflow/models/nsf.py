"""Neural spline flows: rational-quadratic spline couplings or autoregressive layers.

Vectors (tabular data, 2-D toys): ``num_layers`` steps of [an LU linear layer (or a
permutation), a spline coupling with a residual or plain MLP conditioner (``kind=coupling``)
or a MADE-driven spline (``kind=autoregressive``)], and a last linear layer, as the paper's
tabular models. Images: Glow's multi-scale stack with a spline coupling in each step of flow,
the paper's RQ-NSF (C) for images (``kind=coupling``), or the vector stack on the flattened
pixels (``kind=autoregressive``, as MAF).
References: Durkan et al., 2019, "Neural Spline Flows", arXiv:1906.04032.
"""

from __future__ import annotations

import math
from typing import Any

from genflow.bijections.base import Bijection, Compose, Inverted
from genflow.bijections.conv1x1 import InvertibleConv1x1
from genflow.bijections.coupling import alternating_mask
from genflow.bijections.elementwise import BatchNormFlow
from genflow.bijections.permutation import Permutation
from genflow.bijections.rational_quadratic import check_spline, params_per_coordinate
from genflow.bijections.reshape import Flatten
from genflow.bijections.spline import MaskedSplineAutoregressive, SplineCoupling
from genflow.models.base import GenerativeModel
from genflow.models.flow import FlowModel
from genflow.models.glow import glow_flow
from genflow.nn.context import embedded_width
from genflow.nn.conv_net import ConvNet
from genflow.nn.made import MADE
from genflow.nn.mlp import MLP
from genflow.nn.residual_mlp import ResidualMLP
from genflow.nn.resnet import ACTIVATIONS

KINDS = ("coupling", "autoregressive")
CONDITIONERS = ("resnet", "mlp")
LINEARS = ("lu", "permutation", "none")


def _one_of(key: str, value, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"model.{key} must be one of {', '.join(valid)}, got {value!r}")


def check_nsf(kind, conditioner, linear, num_bins, tail_bound, activation) -> None:
    """One sentence for a setting the constructor would reject."""
    _one_of("kind", kind, KINDS)
    _one_of("conditioner", conditioner, CONDITIONERS)
    _one_of("linear", linear, LINEARS)
    _one_of("activation", activation, tuple(ACTIVATIONS))
    check_spline(num_bins, tail_bound)


def _mixing(features: int, linear: str, index: int, seed: int) -> list[Bijection]:
    if linear == "lu":
        return [InvertibleConv1x1(features, identity_init=True)]  # as the paper's code
    if linear == "permutation":
        return [Permutation.random(features, seed + index)]
    return [Permutation.reverse(features)] if index % 2 else []


def spline_vector_flow(
    features: int,
    kind: str = "coupling",
    num_layers: int = 5,
    hidden_features: int = 128,
    num_blocks: int = 2,
    hidden_layers: int = 2,
    num_bins: int = 8,
    tail_bound: float = 3.0,
    conditioner: str = "resnet",
    activation: str = "relu",
    dropout: float = 0.0,
    linear: str = "lu",
    batch_norm: bool = False,
    context_features: int = 0,
    seed: int = 0,
    scale_bins: bool = False,
) -> Bijection:
    """The tabular NSF on (B, features): ``num_layers`` of [mixing, spline] and a last mixing.

    ``linear`` mixes the features between splines: ``lu`` (a learned LU-parameterised linear
    map), ``permutation`` (a fixed random permutation) or ``none`` (the reverse order every
    other layer, so couplings still alternate). ``context_features`` widens each conditioner's
    input for a context vector (and gates every block of a residual conditioner with it). ``scale_bins`` divides the raw bin widths and heights by the
    square root of the hidden width, as the paper's code does.
    """
    check_nsf(kind, conditioner, linear, num_bins, tail_bound, activation)
    if kind == "coupling" and features < 2:
        raise ValueError(
            "a spline coupling needs at least 2 features; use model.kind=autoregressive"
        )
    bin_scale = 1.0 / math.sqrt(hidden_features) if scale_bins else 1.0
    layers: list[Bijection] = []
    for i in range(num_layers):
        layers += _mixing(features, linear, i, seed)
        if kind == "coupling":
            mask = alternating_mask(features, parity=i % 2)
            fixed, out = SplineCoupling.conditioner_sizes(mask, num_bins)
            if conditioner == "resnet":
                net = ResidualMLP(
                    fixed + context_features,
                    out,
                    hidden_features,
                    num_blocks,
                    dropout,
                    activation,
                    context_features=context_features,
                )
            else:
                net = MLP(fixed + context_features, out, hidden_features, hidden_layers, dropout)
            layers.append(SplineCoupling(mask, net, num_bins, tail_bound, bin_scale))
        else:
            made = MADE(
                features,
                hidden_features,
                hidden_layers,
                params_per_coordinate(num_bins),
                context_features=context_features or None,
                seed=seed + i,
            )
            layers.append(MaskedSplineAutoregressive(made, num_bins, tail_bound, bin_scale))
        if batch_norm:
            layers.append(BatchNormFlow(features))
    layers += _mixing(features, linear, num_layers, seed)
    return Compose(layers)


def spline_image_flow(
    shape: tuple[int, int, int],
    num_levels: int,
    steps_per_level: int,
    hidden_channels: int,
    num_bins: int,
    tail_bound: float,
    dropout: float = 0.0,
    scale_bins: bool = False,
) -> Bijection:
    """Glow's levels (squeeze, steps of ActNorm, 1x1 convolution and coupling, a learned
    prior on the half that leaves) with a spline coupling on channel halves in each step
    (``scale_bins``: raw bin widths and heights divided by sqrt(hidden_channels))."""
    check_spline(num_bins, tail_bound)
    bin_scale = 1.0 / math.sqrt(hidden_channels) if scale_bins else 1.0

    def coupling(channels: int) -> Bijection:
        mask = [i < channels // 2 for i in range(channels)]
        fixed, out = SplineCoupling.conditioner_sizes(mask, num_bins)
        net = ConvNet(fixed, out, hidden_channels, dropout)
        return SplineCoupling(mask, net, num_bins, tail_bound, bin_scale)

    return glow_flow(
        shape, num_levels, steps_per_level, hidden_channels, dropout=dropout, coupling=coupling
    )


class NSF(FlowModel):
    """The neural spline flow preset: a tabular stack for vectors (``kind=coupling`` or
    ``autoregressive``), Glow's multi-scale stack of spline couplings for images."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        logit_alpha: float | None = 1e-6,
        kind: str = "coupling",
        num_bins: int = 8,
        tail_bound: float = 3.0,
        num_layers: int = 5,
        hidden_features: int = 128,
        num_blocks: int = 2,
        hidden_layers: int = 2,
        conditioner: str = "resnet",
        activation: str = "relu",
        dropout: float = 0.0,
        linear: str = "lu",
        batch_norm: bool = False,
        num_levels: int = 2,
        steps_per_level: int = 4,
        hidden_channels: int = 64,
        seed: int = 0,
        scale_bins: bool = False,
        **flow_options: Any,
    ):
        check_nsf(kind, conditioner, linear, num_bins, tail_bound, activation)
        event_shape = tuple(event_shape)
        width = embedded_width(
            flow_options.get("context_features"), flow_options.get("context_net")
        )
        multiscale = len(event_shape) == 3 and kind == "coupling"
        if multiscale:
            flow = spline_image_flow(
                event_shape,
                num_levels,
                steps_per_level,
                hidden_channels,
                num_bins,
                tail_bound,
                dropout,
                scale_bins,
            )
        elif len(event_shape) in (1, 3):  # autoregressive on images: on the flattened pixels
            flow = spline_vector_flow(
                math.prod(event_shape),
                kind,
                num_layers,
                hidden_features,
                num_blocks,
                hidden_layers,
                num_bins,
                tail_bound,
                conditioner,
                activation,
                dropout,
                linear,
                batch_norm,
                context_features=width,
                seed=seed,
                scale_bins=scale_bins,
            )
            if len(event_shape) == 3:
                flow = Compose([Flatten(event_shape), flow, Inverted(Flatten(event_shape))])
        else:
            raise ValueError(
                f"NSF takes vectors (D,) or images (C, H, W); got event shape {event_shape}"
            )
        # the multi-scale image stack takes the context in its base only
        super().__init__(
            flow,
            event_shape,
            levels,
            logit_alpha,
            flow_takes_context=not multiscale,
            **flow_options,
        )

    @staticmethod
    def check_config(model_cfg) -> None:
        GenerativeModel.check_config(model_cfg)
        check_nsf(
            model_cfg.get("kind", "coupling"),
            model_cfg.get("conditioner", "resnet"),
            model_cfg.get("linear", "lu"),
            model_cfg.get("num_bins", 8),
            model_cfg.get("tail_bound", 3.0),
            model_cfg.get("activation", "relu"),
        )
