"""The bijection contract: every invertible layer returns (out, logdet) in both directions."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class InverseNotAvailable(NotImplementedError):
    """Raised by layers whose inverse has no closed form (planar, radial, Sylvester)."""

    def __init__(self, name: str):
        super().__init__(f"{name} has no closed-form inverse")


class Bijection(nn.Module):
    """y = f(x | context).

    ``forward`` maps data -> noise and ``inverse`` maps noise -> data unless a subclass says
    otherwise. Both return ``(out, logdet)`` where ``logdet`` has shape ``(B,)`` and is
    ``log|det df/dx|`` for ``forward`` and ``log|det df^{-1}/dy|`` for ``inverse``.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise InverseNotAvailable(type(self).__name__)


class Compose(Bijection):
    """Run bijections in order; log-dets add up, and the inverse runs in reverse order."""

    def __init__(self, layers: Iterable[Bijection]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y, context)
            logdet = logdet + ld
        return y, logdet


class Inverted(Bijection):
    """Swap the directions of a bijection (e.g. an unsqueeze from a squeeze)."""

    def __init__(self, bijection: Bijection):
        super().__init__()
        self.bijection = bijection

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection(y, context)


def zeros_logdet(x: Tensor) -> Tensor:
    return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
