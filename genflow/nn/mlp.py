"""A plain multi-layer perceptron."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` hidden layers of ``hidden_features`` units; optional zero-initialised output.

    A zero last layer makes a coupling layer start as the identity map.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        zero_init_output: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        features = in_features
        for _ in range(num_layers):
            layers += [nn.Linear(features, hidden_features), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = hidden_features
        output = nn.Linear(features, out_features)
        if zero_init_output:
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        layers.append(output)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
