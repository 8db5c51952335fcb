"""NICE: additive coupling layers and a final diagonal scaling.

References: Dinh et al., 2014, "NICE: Non-linear Independent Components Estimation",
arXiv:1410.8516.
"""

from __future__ import annotations

import math
from typing import Any

from genflow.bijections.base import Compose, Inverted
from genflow.bijections.coupling import AdditiveCoupling, alternating_mask
from genflow.bijections.elementwise import DiagonalScaling
from genflow.bijections.reshape import Flatten
from genflow.models.flow import FlowModel
from genflow.nn.context import embedded_width
from genflow.nn.mlp import MLP


class NICE(FlowModel):
    """Additive couplings with alternating partitions on the flattened data, then scaling."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        logit_alpha: float | None = 0.05,
        num_layers: int = 4,
        hidden_features: int = 512,
        hidden_layers: int = 4,
        dropout: float = 0.0,
        **flow_options: Any,
    ):
        event_shape = tuple(event_shape)
        features = math.prod(event_shape)
        width = embedded_width(
            flow_options.get("context_features"), flow_options.get("context_net")
        )
        couplings = [
            AdditiveCoupling(
                alternating_mask(features, parity=i % 2),
                MLP(features + width, features, hidden_features, hidden_layers, dropout),
            )
            for i in range(num_layers)
        ]
        flow = Compose(
            [
                Flatten(event_shape),
                *couplings,
                DiagonalScaling((features,)),
                Inverted(Flatten(event_shape)),
            ]
        )
        super().__init__(
            flow, event_shape, levels, logit_alpha, flow_takes_context=True, **flow_options
        )
