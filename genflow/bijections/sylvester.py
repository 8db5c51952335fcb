"""Sylvester normalizing flows, amortised, in their orthogonal, Householder and triangular forms.

References: van den Berg, Hasenclever, Tomczak & Welling, 2018, "Sylvester Normalizing Flows
for Variational Inference", arXiv:1803.05649.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genflow.bijections.base import Bijection
from genflow.bijections.householder import reflect
from genflow.nn.amortised import per_row
from genflow.numeric import full_precision

VARIANTS = ("orthogonal", "householder", "triangular")


class Sylvester(Bijection):
    """Noise -> latent: z' = z + Q R tanh(R~ Q^T z + b), every parameter from ``context``.

    Q is D x M with orthonormal columns; R and R~ are M x M upper triangular. By Sylvester's
    determinant identity det(I_D + Q R diag(h') R~ Q^T) = det(I_M + diag(h') R~ R), and R~ R
    is upper triangular, so log|det| = sum_j log|1 + h'_j r~_jj r_jj|. Invertibility needs
    r~_jj r_jj > -1 / sup|h'| = -1; the diagonals are tanh(.) so their product lies in
    (-1, 1) for every parameter value. No closed-form inverse.

    ``variant``: ``orthogonal`` (M = ``num_vectors`` <= D, default D // 2; Q from the QR decomposition of an
    amortised D x M matrix, exactly orthonormal, where the paper iterates Bjorck's method),
    ``householder`` (M = D; Q a product of ``num_householder`` amortised reflections) or
    ``triangular`` (M = D; Q the identity, or the reversal permutation when ``reverse``).
    """

    def __init__(
        self,
        features: int,
        context_features: int,
        variant: str = "orthogonal",
        num_vectors: int | None = None,
        num_householder: int = 8,
        reverse: bool = False,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown Sylvester variant '{variant}'; valid: {', '.join(VARIANTS)}")
        d = features
        m = d if variant != "orthogonal" else int(num_vectors or max(1, d // 2))
        if not 1 <= m <= d:
            raise ValueError(
                f"model.posterior.num_ortho_vectors must be in [1, {d}] (model.latent_features), got {m}"
            )
        if variant == "householder" and num_householder < 1:
            raise ValueError(f"model.posterior.num_householder must be >= 1, got {num_householder}")
        self.features, self.num_vectors, self.variant = d, m, variant
        self.num_householder, self.reverse = int(num_householder), bool(reverse)
        upper = torch.triu_indices(m, m, offset=1)
        self.register_buffer("upper_rows", upper[0], persistent=False)
        self.register_buffer("upper_cols", upper[1], persistent=False)
        triangle = upper.shape[1]
        # both triangles' strict upper parts, both diagonals, the bias b
        self.triangles = nn.Linear(context_features, 2 * triangle + 2 * m + m)
        if variant == "orthogonal":
            self.q_params = nn.Linear(context_features, d * m)
        elif variant == "householder":
            self.q_params = nn.Linear(context_features, self.num_householder * d)
        else:
            self.q_params = None

    def _triangular(self, strict: Tensor, diagonal: Tensor) -> Tensor:
        m = self.num_vectors
        r = strict.new_zeros(strict.shape[0], m, m)
        r[:, self.upper_rows, self.upper_cols] = strict
        return r + torch.diag_embed(diagonal)

    def parameters_for(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(R (B,M,M), R~ (B,M,M), b (B,M), Q (B,D,M) or None for the triangular identity)."""
        m, t = self.num_vectors, self.upper_rows.numel()
        raw = full_precision(self.triangles(context))
        strict, strict_t, diag, diag_t, bias = raw.split([t, t, m, m, m], dim=1)
        r = self._triangular(strict, torch.tanh(diag))
        r_tilde = self._triangular(strict_t, torch.tanh(diag_t))
        q = None
        if self.variant == "orthogonal":
            raw_q = full_precision(self.q_params(context)).view(-1, self.features, m)
            q = torch.linalg.qr(raw_q, mode="reduced").Q
        elif self.variant == "householder":
            vectors = full_precision(self.q_params(context)).view(
                -1, self.num_householder, self.features
            )
            # Q = H_1 H_2 ... H_n, built by reflecting the columns of the identity (held as
            # rows, then transposed)
            q = torch.eye(self.features, dtype=context.dtype, device=context.device)
            q = q.expand(context.shape[0], -1, -1)
            for i in reversed(range(self.num_householder)):
                q = reflect(q, vectors[:, i : i + 1, :])
            q = q.transpose(1, 2)
        return r, r_tilde, bias, q

    def _to_basis(self, z: Tensor, q: Tensor | None) -> Tensor:
        """Q^T z."""
        if q is not None:
            return torch.einsum("bdm,bd->bm", q, z)
        return z.flip(1) if self.reverse else z

    def _from_basis(self, y: Tensor, q: Tensor | None) -> Tensor:
        """Q y."""
        if q is not None:
            return torch.einsum("bdm,bm->bd", q, y)
        return y.flip(1) if self.reverse else y

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("Sylvester is amortised: it needs the encoder's context")
        r, r_tilde, bias, q = (
            None if p is None else per_row(p, z.shape[0]) for p in self.parameters_for(context)
        )
        pre = torch.einsum("bij,bj->bi", r_tilde, self._to_basis(z, q)) + bias
        h = torch.tanh(pre)
        out = z + self._from_basis(torch.einsum("bij,bj->bi", r, h), q)
        diag = torch.diagonal(r, dim1=1, dim2=2) * torch.diagonal(r_tilde, dim1=1, dim2=2)
        det = 1.0 + (1.0 - h.pow(2)) * diag
        return out, torch.log(det.abs().clamp(min=1e-30)).sum(1)
