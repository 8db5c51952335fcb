"""MADE: a masked MLP whose outputs for feature i depend only on the features before i.

References: Germain et al., 2015, "MADE: Masked Autoencoder for Distribution Estimation",
arXiv:1502.03509.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.nn.amortised import per_row

ORDERINGS = ("natural", "reversed", "random")
HIDDEN_DEGREES = ("sequential", "random")


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed binary mask."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def input_degrees(features: int, ordering: str, generator: torch.Generator) -> Tensor:
    """The autoregressive order: degree d means the d-th variable (1-based)."""
    if ordering == "natural":
        return torch.arange(1, features + 1)
    if ordering == "reversed":
        return torch.arange(features, 0, -1)
    if ordering == "random":
        return torch.randperm(features, generator=generator) + 1
    raise ValueError(f"unknown MADE ordering '{ordering}'; valid: {', '.join(ORDERINGS)}")


class MADE(nn.Module):
    """Outputs ``output_multiplier`` blocks of ``features`` values; block k, feature i sees x_<i.

    "Before" follows ``ordering`` (natural, reversed or random). Hidden unit degrees are
    ``sequential`` (cycled, so every degree is present) or ``random``. An optional
    ``context`` enters the first hidden layer unmasked (conditional MADE, as IAF uses).
    Output ``out[:, k * D + i]`` is parameter k of feature i. The output layer starts at
    zero, so a flow built on it starts as the identity.
    """

    def __init__(
        self,
        features: int,
        hidden_features: int,
        num_layers: int = 2,
        output_multiplier: int = 2,
        ordering: str = "natural",
        hidden_degrees: str = "sequential",
        context_features: int | None = None,
        seed: int = 0,
        zero_init_output: bool = True,
    ):
        super().__init__()
        if hidden_degrees not in HIDDEN_DEGREES:
            raise ValueError(
                f"unknown hidden_degrees '{hidden_degrees}'; valid: {', '.join(HIDDEN_DEGREES)}"
            )
        generator = torch.Generator().manual_seed(seed)
        self.features = features
        self.output_multiplier = output_multiplier
        degrees_in = input_degrees(features, ordering, generator)
        self.register_buffer("degrees", degrees_in)
        layers: list[nn.Module] = []
        previous = degrees_in
        low = int(degrees_in.min())
        top = max(features - 1, 1)
        for _ in range(num_layers):
            if hidden_degrees == "sequential":
                hidden = torch.arange(hidden_features) % top + min(low, top)
            else:
                hidden = torch.randint(
                    min(low, top), top + 1, (hidden_features,), generator=generator
                )
            layers.append(
                MaskedLinear(
                    previous.numel(), hidden_features, hidden[:, None] >= previous[None, :]
                )
            )
            previous = hidden
        degrees_out = degrees_in.repeat(output_multiplier)
        self.hidden = nn.ModuleList(layers)
        self.output = MaskedLinear(
            previous.numel(), features * output_multiplier, degrees_out[:, None] > previous[None, :]
        )
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)
        self.context = nn.Linear(context_features, hidden_features) if context_features else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = x
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.context is not None and context is not None:
                h = h + per_row(self.context(context), h.shape[0])
            h = F.gelu(h)
        return self.output(h)
