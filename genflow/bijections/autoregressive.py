"""The masked affine autoregressive layer: MAF uses it data -> noise, IAF noise -> data."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from genflow.bijections.base import Bijection
from genflow.nn.made import MADE
from genflow.numeric import sum_except_batch


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """Identity near zero, smoothly bounded by +-bound: keeps exp(log-scale) finite."""
    return bound * torch.tanh(x / bound)


AFFINE_SCALES = ("softclamp", "sigmoid", "gated")


class MaskedAffineAutoregressive(Bijection):
    """Data -> noise in one pass: z_i = (x_i - mu_i(x_<i)) * exp(-a_i(x_<i)).

    ``forward`` is one MADE pass; ``inverse`` needs D passes, one per variable in the MADE
    order. MAF stacks it data -> noise, so density is one pass and sampling D passes. IAF
    uses the same one-pass ``forward`` as its noise -> data map (posterior samples z_0 ->
    z_K), so sampling is the fast direction there. ``context`` is passed to the MADE.
    References: Papamakarios et al., 2017, arXiv:1705.07057; Kingma et al., 2016,
    arXiv:1606.04934.
    """

    def __init__(self, made: MADE, log_scale_bound: float = 5.0, scale: str = "softclamp"):
        super().__init__()
        if made.output_multiplier != 2:
            raise ValueError("MaskedAffineAutoregressive needs a MADE with output_multiplier=2")
        if scale not in AFFINE_SCALES:
            raise ValueError(f"unknown affine scale '{scale}'; valid: {', '.join(AFFINE_SCALES)}")
        self.made = made
        self.log_scale_bound = log_scale_bound
        self.scale = scale

    def _params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, raw = self.made(x, context).chunk(2, dim=1)
        if self.scale == "sigmoid":
            # data -> noise multiplies by sigmoid(raw + 2) + 1e-3 in (0.001, 1.001): a layer
            # contracts, never expands an example's distance from its shift by more than
            # 0.1%, so no layer can raise one example's density by orders of magnitude
            return shift, -torch.log(torch.sigmoid(raw + 2.0) + 1e-3)
        if self.scale == "gated":
            # IAF's gated update (Kingma et al., 2016, eq. 14): y = g * x + (1 - g) * m with
            # g = sigmoid(raw + 2), the "shift" output read as m, i.e. (x - c) * g with
            # c = -(1 - g) / g * m; the +2 starts g near 1, as the paper advises
            gate = torch.sigmoid(raw + 2.0)
            return -(1.0 - gate) / gate * shift, -torch.log(gate)
        return shift, soft_clamp(raw, self.log_scale_bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._params(x, context)
        return (x - shift) * torch.exp(-log_scale), -sum_except_batch(log_scale)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        def invert(x: Tensor) -> tuple[Tensor, Tensor]:
            shift, log_scale = self._params(x, context)
            return z * torch.exp(log_scale) + shift, sum_except_batch(log_scale)

        return autoregressive_inverse(z, self.made.degrees, invert)


def autoregressive_inverse(
    z: Tensor, degrees: Tensor, invert: Callable[[Tensor], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Invert an autoregressive layer in D passes. ``invert(x)`` maps the noise ``z`` back
    with the parameters computed from the current ``x`` and returns (x, logdet); variable i,
    in the order of ``degrees``, is kept from the pass where every variable before it is
    final, and after the last pass every parameter (and so the log-det) is final."""
    x = torch.zeros_like(z)
    logdet = z.new_zeros(z.shape[0])
    columns = torch.arange(z.shape[1], device=z.device)
    for i in torch.argsort(degrees).tolist():
        candidate, logdet = invert(x)
        x = torch.where(columns == i, candidate, x)
    return x, logdet
