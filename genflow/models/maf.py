"""MAF: masked autoregressive flow, a stack of MADE-driven affine autoregressive layers.

References: Papamakarios et al., 2017, "Masked Autoregressive Flow for Density Estimation",
arXiv:1705.07057; Germain et al., 2015, arXiv:1502.03509 (MADE).
"""

from __future__ import annotations

import math
from typing import Any

from genflow.bijections.autoregressive import MaskedAffineAutoregressive
from genflow.bijections.base import Bijection, Compose, Inverted
from genflow.bijections.elementwise import BatchNormFlow
from genflow.bijections.permutation import Permutation
from genflow.bijections.reshape import Flatten
from genflow.models.flow import FlowModel
from genflow.nn.context import embedded_width
from genflow.nn.made import MADE

PERMUTATIONS = ("reverse", "random", "none")


class MAF(FlowModel):
    """``num_layers`` MADE layers on the flattened data, a permutation between each two.

    Density is one pass per layer; sampling inverts each layer in D sequential passes.
    ``batch_norm`` inserts the paper's batch-normalisation bijection after each layer.
    ``scale`` is the affine layers' scale: ``sigmoid`` (data -> noise by a factor in (0.001,
    1.001), so no layer can make one example's density explode) or ``softclamp`` (a
    log-scale in (-5, 5), up to e^5 expansion per layer and coordinate); ``auto`` (the config's
    default) is ``sigmoid`` on discrete data (images) and ``softclamp`` on continuous data
    (vectors, tables, SBI posteriors, which are often much narrower than the standard normal
    and need layers that expand). The argument's default stays ``softclamp``, which
    checkpoints written before the option existed were trained with (their stored config has
    no ``scale``).
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        logit_alpha: float | None = 0.05,
        num_layers: int = 5,
        hidden_features: int = 512,
        hidden_layers: int = 2,
        ordering: str = "natural",
        hidden_degrees: str = "sequential",
        permutation: str = "reverse",
        batch_norm: bool = False,
        seed: int = 0,
        scale: str = "softclamp",
        **flow_options: Any,
    ):
        if permutation not in PERMUTATIONS:
            raise ValueError(
                f"unknown MAF permutation '{permutation}'; valid: {', '.join(PERMUTATIONS)}"
            )
        if scale == "auto":
            scale = "sigmoid" if levels else "softclamp"
        event_shape = tuple(event_shape)
        features = math.prod(event_shape)
        width = embedded_width(
            flow_options.get("context_features"), flow_options.get("context_net")
        )
        layers: list[Bijection] = [Flatten(event_shape)]
        for i in range(num_layers):
            made = MADE(
                features,
                hidden_features,
                hidden_layers,
                2,
                ordering,
                hidden_degrees,
                context_features=width or None,
                seed=seed + i,
            )
            layers.append(MaskedAffineAutoregressive(made, scale=scale))
            if batch_norm:
                layers.append(BatchNormFlow(features))
            if i < num_layers - 1 and permutation != "none":
                layers.append(
                    Permutation.reverse(features)
                    if permutation == "reverse"
                    else Permutation.random(features, seed + i)
                )
        layers.append(Inverted(Flatten(event_shape)))
        super().__init__(
            Compose(layers),
            event_shape,
            levels,
            logit_alpha,
            flow_takes_context=True,
            **flow_options,
        )
