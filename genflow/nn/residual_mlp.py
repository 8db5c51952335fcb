"""A residual MLP: the vector conditioner of the neural spline flow paper's tabular models."""

from __future__ import annotations

from torch import Tensor, nn

from genflow.nn.resnet import activation_layer


class ResidualLinearBlock(nn.Module):
    """x + linear(dropout(act(linear(act(x))))), pre-activation. The last linear layer starts
    near zero (uniform in +-1e-3, as the NSF paper's code), so each block starts close to the
    identity and the network to its input and output layers."""

    def __init__(self, features: int, dropout: float = 0.0, activation: str = "relu"):
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

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ResidualMLP(nn.Module):
    """Linear in, ``num_blocks`` residual blocks of ``hidden_features``, activation, linear out
    (zero-initialised by default, so a coupling built on it starts as the identity).

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
    ):
        super().__init__()
        self.input = nn.Linear(in_features, hidden_features)
        self.blocks = nn.Sequential(
            *(ResidualLinearBlock(hidden_features, dropout, activation) for _ in range(num_blocks))
        )
        self.activation = activation_layer(activation)
        self.output = nn.Linear(hidden_features, out_features)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.activation(self.blocks(self.input(x))))
