"""Neural spline flows: rational-quadratic splines whose knots come from a conditioner.

One spline (genflow/bijections/rational_quadratic.py); what differs between the coupling and
the autoregressive layer is only the conditioner that reads the inputs (an MLP or CNN on the
fixed features, or a MADE). Both run data -> noise in ``forward``.
References: Durkan et al., 2019, "Neural Spline Flows", arXiv:1906.04032.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genflow.bijections.autoregressive import autoregressive_inverse
from genflow.bijections.base import Bijection
from genflow.bijections.rational_quadratic import (
    check_spline,
    params_per_coordinate,
    rational_quadratic_spline,
)
from genflow.nn.made import MADE
from genflow.numeric import sum_except_batch


def spline_parameters(h: Tensor, features: int) -> Tensor:
    """A conditioner's output (B, P * F, ...) -> (B, F, ..., P): parameter p of feature f is
    ``h[:, p * F + f]``, MADE's output layout, for vectors (B, P * F) and images alike."""
    params = h.reshape(h.shape[0], -1, features, *h.shape[2:])
    return params.movedim(1, -1)


class SplineCoupling(Bijection):
    """Data -> noise on (B, F) vectors or (B, C, H, W) images: the features (channels) with
    ``mask`` 1 pass unchanged and condition a rational-quadratic spline of each other one.

    The conditioner maps the fixed features (and a ``context``, concatenated along dimension 1)
    to ``(3K - 1)`` parameters per moved feature, ``(B, (3K - 1) * moved, ...)``. Its last
    layer starts at zero, which makes the spline the identity. ``bin_scale`` multiplies the
    raw bin widths and heights (see ``rational_quadratic_spline``).
    References: Durkan et al., 2019, arXiv:1906.04032 (RQ-NSF (C)); Dinh et al., 2017.
    """

    def __init__(
        self,
        mask: Tensor,
        conditioner: nn.Module,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        bin_scale: float = 1.0,
    ):
        super().__init__()
        check_spline(num_bins, tail_bound)
        self.bin_scale = float(bin_scale)
        mask = torch.as_tensor(mask).bool().reshape(-1)
        if mask.all() or not mask.any():
            raise ValueError("a spline coupling needs both fixed and moved features")
        self.register_buffer("fixed_index", torch.nonzero(mask).reshape(-1))
        self.register_buffer("moved_index", torch.nonzero(~mask).reshape(-1))
        self.conditioner = conditioner
        self.num_bins = num_bins
        self.tail_bound = float(tail_bound)

    @staticmethod
    def conditioner_sizes(mask: Tensor, num_bins: int) -> tuple[int, int]:
        """(inputs, outputs) of the conditioner for this mask, without context."""
        mask = torch.as_tensor(mask).bool().reshape(-1)
        fixed = int(mask.sum())
        return fixed, params_per_coordinate(num_bins) * (len(mask) - fixed)

    def _transform(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        fixed = x.index_select(1, self.fixed_index)
        inputs = fixed if context is None else torch.cat((fixed, context.to(fixed.dtype)), dim=1)
        params = spline_parameters(self.conditioner(inputs), len(self.moved_index))
        moved, log_slope = rational_quadratic_spline(
            x.index_select(1, self.moved_index), params, self.tail_bound, inverse, self.bin_scale
        )
        out = x.index_copy(1, self.moved_index, moved.to(x.dtype))
        return out, sum_except_batch(log_slope)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(x, context, inverse=False)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(y, context, inverse=True)


class MaskedSplineAutoregressive(Bijection):
    """Data -> noise in one pass: z_i = spline(x_i; theta_i(x_<i)), theta from a MADE with
    ``3K - 1`` outputs per feature. ``inverse`` takes D passes, one per variable in the MADE's
    order. ``context`` goes to the MADE.
    References: Durkan et al., 2019, arXiv:1906.04032 (RQ-NSF (AR)).
    """

    def __init__(
        self, made: MADE, num_bins: int = 8, tail_bound: float = 3.0, bin_scale: float = 1.0
    ):
        super().__init__()
        check_spline(num_bins, tail_bound)
        self.bin_scale = float(bin_scale)
        if made.output_multiplier != params_per_coordinate(num_bins):
            raise ValueError(
                f"a spline of {num_bins} bins needs a MADE with output_multiplier="
                f"{params_per_coordinate(num_bins)}, got {made.output_multiplier}"
            )
        self.made = made
        self.num_bins = num_bins
        self.tail_bound = float(tail_bound)

    def _params(self, x: Tensor, context: Tensor | None) -> Tensor:
        return spline_parameters(self.made(x, context), x.shape[1])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_slope = rational_quadratic_spline(
            x, self._params(x, context), self.tail_bound, bin_scale=self.bin_scale
        )
        return z.to(x.dtype), sum_except_batch(log_slope)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        def invert(x: Tensor) -> tuple[Tensor, Tensor]:
            params = self._params(x, context)
            x_new, log_slope = rational_quadratic_spline(
                z, params, self.tail_bound, True, self.bin_scale
            )
            return x_new.to(z.dtype), sum_except_batch(log_slope)

        return autoregressive_inverse(z, self.made.degrees, invert)
