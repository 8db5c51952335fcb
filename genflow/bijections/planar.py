"""The planar flow, amortised: its parameters come from the encoder's context.

References: Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows",
arXiv:1505.05770 (section 4.1 and appendix A.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.bijections.base import Bijection
from genflow.nn.amortised import per_row
from genflow.numeric import full_precision


class Planar(Bijection):
    """Noise -> latent: z' = z + u_hat * tanh(w^T z + b), with (u, w, b) from ``context``.

    ``forward`` maps a posterior sample z_0 towards z_K and returns log|det dz'/dz|; there is
    no closed-form inverse. ``context`` has one row per row of z, or one per example when z
    holds k samples per example (example-major). Invertibility needs w^T u_hat >= -1, which
    the reparameterisation u_hat = u + (m(w^T u) - w^T u) w / |w|^2 with
    m(a) = -1 + softplus(a) guarantees for every parameter value (then
    1 + tanh'(.) w^T u_hat > 0, so the log-det is finite).
    """

    def __init__(self, features: int, context_features: int):
        super().__init__()
        self.features = features
        self.params = nn.Linear(context_features, 2 * features + 1)

    def constrained(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(u_hat, w, b) for each example; w^T u_hat > -1 always."""
        d = self.features
        raw = full_precision(self.params(context))
        u, w, b = raw[:, :d], raw[:, d : 2 * d], raw[:, 2 * d :]
        wu = (w * u).sum(1, keepdim=True)
        w_norm2 = w.pow(2).sum(1, keepdim=True).clamp(min=1e-12)
        u_hat = u + (F.softplus(wu) - 1.0 - wu) * w / w_norm2
        return u_hat, w, b

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("Planar is amortised: it needs the encoder's context")
        u_hat, w, b = (per_row(p, z.shape[0]) for p in self.constrained(context))
        h = torch.tanh((w * z).sum(1, keepdim=True) + b)
        out = z + u_hat * h
        # det(I + u psi^T) = 1 + psi^T u with psi = tanh'(.) w; positive by the constraint
        det = 1.0 + (1.0 - h.pow(2)) * (w * u_hat).sum(1, keepdim=True)
        return out, torch.log(det.abs().clamp(min=1e-30)).squeeze(1)
