"""Fixed permutations of vector features (between autoregressive or coupling layers)."""

from __future__ import annotations

import torch
from torch import Tensor

from genflow.bijections.base import Bijection, zeros_logdet


class Permutation(Bijection):
    """y = x[:, perm]; a permutation has log-det 0."""

    def __init__(self, permutation: Tensor):
        super().__init__()
        self.register_buffer("permutation", permutation.long())
        self.register_buffer("inverse_permutation", torch.argsort(permutation.long()))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.permutation], zeros_logdet(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y[:, self.inverse_permutation], zeros_logdet(y)

    @classmethod
    def reverse(cls, features: int) -> Permutation:
        return cls(torch.arange(features - 1, -1, -1))

    @classmethod
    def random(cls, features: int, seed: int) -> Permutation:
        return cls(torch.randperm(features, generator=torch.Generator().manual_seed(seed)))
