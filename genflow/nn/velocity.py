"""Velocity fields v(t, x | c) for continuous-time flows."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ACTIVATIONS = {
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "selu": nn.SELU,
}


def time_features(t: Tensor, n: int) -> Tensor:
    """t in [0, 1] -> (..., n) features: t itself, then sines and cosines of t at the
    frequencies pi * 2^k (k = 0, 1, ...), so the field can change fast in time where it must."""
    t = t.unsqueeze(-1)
    pairs = (n - 1) // 2
    freqs = math.pi * 2.0 ** torch.arange(pairs, dtype=t.dtype, device=t.device)
    angles = t * freqs
    parts = [t, torch.sin(angles), torch.cos(angles)]
    out = torch.cat(parts, dim=-1)
    if out.shape[-1] < n:  # an even n: one more sine
        out = torch.cat([out, torch.sin(t * math.pi * 2.0**pairs)], dim=-1)
    return out


class VelocityMLP(nn.Module):
    """v(t, x | c) on (B, features): ``num_layers`` hidden layers of ``hidden_features``
    units with a nonlinearity, and the time features (and the context, where there is
    one) added into every layer (FFJORD's "concat" layers), so every layer knows where on the
    path it is.

    SiLU (the default), tanh, softplus and GELU are smooth, so the divergence, and its
    gradient when the likelihood is trained (FFJORD), is defined everywhere. SELU's slope
    jumps at 0: adaptive solvers take more steps over its field (see benchmarks/README.md).
    """

    def __init__(
        self,
        features: int,
        hidden_features: int = 256,
        num_layers: int = 3,
        time_features: int = 16,
        context_features: int = 0,
        activation: str = "silu",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        if num_layers < 1 or hidden_features < 1 or time_features < 1:
            raise ValueError(
                "model.num_layers, model.hidden_features and model.time_features must be >= 1"
            )
        self.features = features
        self.time_features = time_features
        cond = time_features + context_features
        widths = [features] + [hidden_features] * num_layers
        self.layers = nn.ModuleList(nn.Linear(w, hidden_features) for w in widths[:-1])
        self.conds = nn.ModuleList(
            nn.Linear(cond, hidden_features, bias=False) for _ in range(num_layers)
        )
        self.out = nn.Linear(hidden_features, features)
        self.act = ACTIVATIONS[activation]()

    def forward(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``t``: a scalar or (B,) times; ``x``: (B, features); ``context``: (B, width)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        cond = time_features(t, self.time_features)
        if context is not None:
            cond = torch.cat([cond, context.to(x.dtype)], dim=-1)
        h = x
        for layer, inject in zip(self.layers, self.conds, strict=True):
            h = self.act(layer(h) + inject(cond))
        return self.out(h)
