"""A residual MLP: the vector conditioner of the neural spline flow paper's tabular models."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genflow.nn.resnet import activation_layer


class ResidualLinearBlock(nn.Module):
    """x + linear(dropout(act(linear(act(x))))), pre-activation. The last linear layer starts
    near zero (uniform in +-1e-3, as the NSF paper's code), so each block starts close to the
    identity and the network to its input and output layers.

    With ``context_features`` the block's update is gated by the context, a gated linear unit:
    update * sigmoid(linear(context)), so the context reaches every block, not only the input.
    """

    def __init__(
        self,
        features: int,
        dropout: float = 0.0,
        activation: str = "relu",
        context_features: int = 0,
    ):
        super().__init__()
        self.net = nn.Sequential(
            activation_layer(activation),
            nn.Linear(features, features),
            activation_layer(activation),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(features, features),
        )
        nn.init.uniform_(self.net[-1].weight, -1e-3, 1e-3)
        nn.init.uniform_(self.net[-1].bias, -1e-3, 1e-3)
        self.gate = nn.Linear(context_features, features) if context_features else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        update = self.net(x)
        if self.gate is not None:
            update = update * torch.sigmoid(self.gate(context))
        return x + update


class ResidualMLP(nn.Module):
    """Linear in, ``num_blocks`` residual blocks of ``hidden_features``, activation, linear out
    (zero-initialised by default, so a coupling built on it starts as the identity).

    With ``context_features`` > 0 the last ``context_features`` of the ``in_features`` inputs
    are a context: the input layer sees them with the rest, and every block is gated by them
    (as the paper's code conditions its residual networks).

    References: Durkan et al., 2019, arXiv:1906.04032 (appendix B: residual conditioners).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 128,
        num_blocks: int = 2,
        dropout: float = 0.0,
        activation: str = "relu",
        zero_init_output: bool = True,
        context_features: int = 0,
    ):
        super().__init__()
        if not 0 <= context_features <= in_features:
            raise ValueError(
                f"context_features ({context_features}) must be between 0 and in_features "
                f"({in_features})"
            )
        self.context_features = context_features
        self.input = nn.Linear(in_features, hidden_features)
        self.blocks = nn.ModuleList(
            ResidualLinearBlock(hidden_features, dropout, activation, context_features)
            for _ in range(num_blocks)
        )
        self.activation = activation_layer(activation)
        self.output = nn.Linear(hidden_features, out_features)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor) -> Tensor:
        context = x[:, x.shape[1] - self.context_features :] if self.context_features else None
        h = self.input(x)
        for block in self.blocks:
            h = block(h, context)
        return self.output(self.activation(h))
