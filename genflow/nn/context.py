"""The context of a conditional density p(x | c) as its conditioners and its base see it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genflow.nn.mlp import MLP


def check_context_net(context_net) -> dict:
    """``model.context_net`` as keyword arguments, or one sentence for a bad value."""
    options = dict(context_net or {})
    unknown = sorted(set(options) - {"features", "hidden_features", "num_layers"})
    if unknown:
        raise ValueError(
            f"model.context_net has no key '{unknown[0]}'; its keys: features, "
            "hidden_features, num_layers"
        )
    for key, low in (("features", 0), ("hidden_features", 1), ("num_layers", 1)):
        value = options.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"model.context_net.{key} must be an integer >= {low}, got {value!r}")
    return options


def embedded_width(context_features: int | None, context_net) -> int:
    """How many values the conditioners receive per example: 0 without a context."""
    if not context_features:
        return 0
    return check_context_net(context_net).get("features", 0) or int(context_features)


class ContextEmbedding(nn.Module):
    """c -> (c - loc) / scale (the training split's statistics, buffers in the checkpoint),
    then an MLP to ``features`` values when ``features`` > 0 (an embedding network, learned
    with the flow), or the standardised context as it is."""

    def __init__(
        self,
        context_features: int,
        features: int = 0,
        hidden_features: int = 64,
        num_layers: int = 2,
    ):
        super().__init__()
        self.register_buffer("loc", torch.zeros(context_features))
        self.register_buffer("scale", torch.ones(context_features))
        self.net = (
            MLP(context_features, features, hidden_features, num_layers, zero_init_output=False)
            if features
            else None
        )
        self.out_features = features or context_features

    def set_standardization(self, loc: Tensor, scale: Tensor) -> None:
        self.loc.copy_(torch.as_tensor(loc).reshape(self.loc.shape))
        self.scale.copy_(torch.as_tensor(scale).reshape(self.scale.shape))

    def forward(self, c: Tensor) -> Tensor:
        h = (c.to(self.loc.dtype) - self.loc) / self.scale
        return h if self.net is None else self.net(h)
