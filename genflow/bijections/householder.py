"""Householder reflections: the Householder flow, and the orthogonal matrices of Sylvester flows.

References: Tomczak & Welling, 2016, "Improving Variational Auto-Encoders using Householder
Flow", arXiv:1611.09630.
"""

from __future__ import annotations

from torch import Tensor, nn

from genflow.bijections.base import Bijection, zeros_logdet
from genflow.nn.amortised import per_row
from genflow.numeric import full_precision


def reflect(z: Tensor, v: Tensor) -> Tensor:
    """H z = z - 2 v (v^T z) / |v|^2 for each row, with v (B, D) and z (B, D)."""
    v_norm2 = v.pow(2).sum(-1, keepdim=True).clamp(min=1e-12)
    return z - 2.0 * v * (v * z).sum(-1, keepdim=True) / v_norm2


class HouseholderReflection(Bijection):
    """Noise -> latent: z' = (I - 2 v v^T / |v|^2) z with v from the encoder's context.

    Volume-preserving (|det| = 1, log-det 0) and its own inverse, so both directions exist.
    """

    def __init__(self, features: int, context_features: int):
        super().__init__()
        self.vector = nn.Linear(context_features, features)

    def _v(self, context: Tensor | None, rows: int) -> Tensor:
        if context is None:
            raise ValueError("HouseholderReflection is amortised: it needs the encoder's context")
        return per_row(full_precision(self.vector(context)), rows)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return reflect(z, self._v(context, z.shape[0])), zeros_logdet(z)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return reflect(z, self._v(context, z.shape[0])), zeros_logdet(z)
