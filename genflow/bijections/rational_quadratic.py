"""Rational-quadratic spline numerics: the knots, the bin search, the monotone map and its
inverse, and identity tails. The bijections in genflow/bijections/spline.py call these.

On [-B, B] the map is a monotone rational-quadratic spline of ``K`` bins whose widths,
heights and interior knot derivatives come from ``3K - 1`` unconstrained numbers per
coordinate; outside it is the identity, and the derivatives at -B and B are 1, so the map and
its slope are continuous there. References: Durkan et al., 2019, "Neural Spline Flows",
arXiv:1906.04032 (section 3.1, appendix A); Gregory & Delbourgo, 1982.

Numerics: the spline is evaluated with the tail inputs replaced by 0 and the tail values are
chosen afterwards with ``torch.where``, so the branch that is thrown away never sees a value
outside its domain and its gradient is zero, not NaN. (No clamp touches a value the output
keeps: torch.clamp's gradient is 0 at its bounds, which would zero dy/dx at +-B and, on the
bin coordinate, at every knot.) The inverse's discriminant is clamped at
zero against rounding (it is positive in exact arithmetic for a monotone spline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from genflow.numeric import full_precision

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3


def params_per_coordinate(num_bins: int) -> int:
    """K widths, K heights and K - 1 interior derivatives."""
    return 3 * num_bins - 1


def check_spline(num_bins, tail_bound, prefix: str = "model") -> None:
    """One sentence for a spline that cannot be built (``<prefix>.num_bins``,
    ``<prefix>.tail_bound``: the config keys the sentence names)."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"{prefix}.num_bins must be an integer >= 2, got {num_bins!r}")
    if (
        isinstance(tail_bound, bool)
        or not isinstance(tail_bound, (int, float))
        or not math.isfinite(tail_bound)
        or tail_bound <= 0
    ):
        raise ValueError(
            f"{prefix}.tail_bound must be a positive number (the spline acts on [-B, B]), "
            f"got {tail_bound!r}"
        )
    if num_bins * max(MIN_BIN_WIDTH, MIN_BIN_HEIGHT) >= 1:
        raise ValueError(
            f"{prefix}.num_bins={num_bins} is too many: each bin keeps at least "
            f"{MIN_BIN_WIDTH} of the interval, so num_bins must be below "
            f"{int(1 / max(MIN_BIN_WIDTH, MIN_BIN_HEIGHT))}"
        )


# softplus(raw + DERIVATIVE_SHIFT) + MIN_DERIVATIVE is exactly 1 at raw = 0, so a conditioner
# whose last layer starts at zero makes the spline start as the identity
DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def _knots(raw: Tensor, bound: float, min_size: float) -> tuple[Tensor, Tensor]:
    """(..., K) unconstrained -> knot positions (..., K + 1) from -bound to bound (the ends
    exact) and the bin sizes (..., K), each at least ``min_size`` of the interval."""
    num_bins = raw.shape[-1]
    sizes = min_size + (1.0 - min_size * num_bins) * torch.softmax(raw, dim=-1)
    inner = (2.0 * torch.cumsum(sizes, dim=-1)[..., :-1] - 1.0) * bound
    ends = inner.new_full((*inner.shape[:-1], 1), bound)
    knots = torch.cat((-ends, inner, ends), dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def _gather(values: Tensor, index: Tensor) -> Tensor:
    return values.gather(-1, index).squeeze(-1)


def rational_quadratic_spline(
    x: Tensor, raw: Tensor, tail_bound: float, inverse: bool = False, bin_scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The spline (or its inverse) applied elementwise: ``x`` of shape (...), ``raw`` of shape
    (..., 3K - 1) holding [widths, heights, interior derivatives]. Returns the output and the
    elementwise log |dy/dx| (of the map applied: negative slopes' logs for the inverse).
    ``bin_scale`` multiplies the raw widths and heights before their softmax (the reference
    implementation divides them by the square root of the conditioner's hidden width, which
    slows the bins' learning against the derivatives').

    Computed in at least fp32 whatever the network's precision.
    """
    dtype = full_precision(x).dtype
    x, raw = x.to(dtype), raw.to(dtype)
    num_bins = (raw.shape[-1] + 1) // 3
    if raw.shape[-1] != params_per_coordinate(num_bins):
        raise ValueError(f"a spline takes 3K - 1 parameters per coordinate, got {raw.shape[-1]}")
    raw_w, raw_h, raw_d = (
        raw[..., :num_bins],
        raw[..., num_bins : 2 * num_bins],
        raw[..., 2 * num_bins :],
    )
    if bin_scale != 1.0:
        raw_w, raw_h = raw_w * bin_scale, raw_h * bin_scale
    xs, widths = _knots(raw_w, tail_bound, MIN_BIN_WIDTH)
    ys, heights = _knots(raw_h, tail_bound, MIN_BIN_HEIGHT)
    inner = MIN_DERIVATIVE + F.softplus(raw_d + DERIVATIVE_SHIFT)
    derivatives = F.pad(inner, (1, 1), value=1.0)  # slope 1 at -B and B: identity tails

    inside = (x >= -tail_bound) & (x <= tail_bound)
    # tails are evaluated at 0 and thrown away (a clamp would also zero the gradient at +-B)
    clamped = torch.where(inside, x, torch.zeros_like(x))
    searched = (ys if inverse else xs)[..., 1:-1].contiguous()
    # the number of interior knots at or below the value: its bin, 0 .. K - 1
    bin_index = torch.searchsorted(searched, clamped.unsqueeze(-1).contiguous(), right=True)

    x_k, w_k = _gather(xs, bin_index), _gather(widths, bin_index)
    y_k, h_k = _gather(ys, bin_index), _gather(heights, bin_index)
    d_k, d_k1 = _gather(derivatives, bin_index), _gather(derivatives, bin_index + 1)
    slope = h_k / w_k
    curvature = d_k1 + d_k - 2.0 * slope

    if inverse:
        dy = clamped - y_k
        a = h_k * (slope - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -slope * dy
        discriminant = (b.pow(2) - 4.0 * a * c).clamp_min(0.0)
        xi = (2.0 * c) / (-b - torch.sqrt(discriminant))  # the root in [0, 1], stable form
        spline = xi * w_k + x_k
    else:
        # in [0, 1] exactly: the bin search and the knots are the same numbers
        xi = (clamped - x_k) / w_k
        xi_1m = xi * (1.0 - xi)
        spline = y_k + h_k * (slope * xi.pow(2) + d_k * xi_1m) / (slope + curvature * xi_1m)

    xi_1m = xi * (1.0 - xi)
    denominator = slope + curvature * xi_1m
    numerator = slope.pow(2) * (d_k1 * xi.pow(2) + 2.0 * slope * xi_1m + d_k * (1.0 - xi).pow(2))
    log_slope = torch.log(numerator) - 2.0 * torch.log(denominator)
    if inverse:
        log_slope = -log_slope
    out = torch.where(inside, spline, x)
    return out, torch.where(inside, log_slope, torch.zeros_like(log_slope))
