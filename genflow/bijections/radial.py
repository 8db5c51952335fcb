"""The radial flow, amortised: its parameters come from the encoder's context.

References: Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows",
arXiv:1505.05770 (section 4.1 and appendix A.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.bijections.base import Bijection
from genflow.nn.amortised import per_row
from genflow.numeric import full_precision


class Radial(Bijection):
    """Noise -> latent: z' = z + beta h(alpha, r) (z - z_ref), h = 1 / (alpha + r), r = |z - z_ref|.

    ``forward`` returns log|det dz'/dz| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h' r);
    there is no closed-form inverse. alpha = softplus(.) > 0 and beta = -alpha + softplus(.)
    > -alpha, the condition for invertibility, for every parameter value.
    """

    def __init__(self, features: int, context_features: int):
        super().__init__()
        self.features = features
        self.params = nn.Linear(context_features, features + 2)

    def constrained(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_ref, alpha, beta) for each example; alpha > 0 and beta > -alpha always."""
        raw = full_precision(self.params(context))
        d = self.features
        z_ref, alpha_raw, beta_raw = raw[:, :d], raw[:, d : d + 1], raw[:, d + 1 :]
        alpha = F.softplus(alpha_raw)
        beta = -alpha + F.softplus(beta_raw)
        return z_ref, alpha, beta

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("Radial is amortised: it needs the encoder's context")
        z_ref, alpha, beta = (per_row(p, z.shape[0]) for p in self.constrained(context))
        diff = z - z_ref
        r = diff.pow(2).sum(1, keepdim=True).add(1e-30).sqrt()
        h = 1.0 / (alpha + r)
        beta_h = beta * h
        out = z + beta_h * diff
        # 1 + beta h + beta h'(r) r with h' = -h^2 simplifies to 1 + beta alpha h^2
        logdet = (self.features - 1) * torch.log1p(beta_h) + torch.log1p(beta * alpha * h.pow(2))
        return out, logdet.squeeze(1)
