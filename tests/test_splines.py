"""The rational-quadratic spline's numerics where spline libraries break: inputs at the knots,
at +-B and in the tails, batches entirely in the tails, float32 round trips, gradients of the
branch that is thrown away, monotonicity; and one sentence for a spline that cannot exist."""

from __future__ import annotations

import re

import pytest
import torch

from genflow.bijections.rational_quadratic import (
    _knots,
    check_spline,
    params_per_coordinate,
    rational_quadratic_spline,
)
from genflow.bijections.spline import SplineCoupling
from genflow.nn import MLP

K, B = 8, 3.0
EPS32 = torch.finfo(torch.float32).eps


def _raw(rows: int, scale: float, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(rows, params_per_coordinate(K), generator=generator, dtype=dtype)


def _knot_inputs(raw: torch.Tensor) -> torch.Tensor:
    """Each row's K + 1 knot positions (the bin edges), -B and B included."""
    return _knots(raw[:, :K], B, 1e-3)[0]


def test_zero_parameters_are_the_identity():
    x = torch.linspace(-5, 5, 101)
    y, log_slope = rational_quadratic_spline(x, torch.zeros(101, params_per_coordinate(K)), B)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(log_slope, torch.zeros(101))


def test_log_slope_is_the_derivative_everywhere_in_float64():
    """Inside, at the knots and in the tails, forward and inverse: the returned log-slope is
    log dy/dx by autograd (the harness checks whole layers; this checks wild parameters)."""
    raw = _raw(400, 2.0, torch.float64).repeat(3, 1)
    inside = torch.rand(400, dtype=torch.float64) * 2 * B - B
    tails = torch.cat((torch.linspace(-9, -B, 200), torch.linspace(B, 9, 200))).double()
    x = torch.cat((inside, tails, _knot_inputs(raw[:400]).flatten()[:400])).requires_grad_()
    for inverse in (False, True):
        y, log_slope = rational_quadratic_spline(x, raw, B, inverse)
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(torch.log(grad), log_slope, atol=1e-9, rtol=1e-9)


def test_float64_round_trip_and_inverse_log_slope():
    raw = _raw(2000, 2.0, torch.float64)
    x = torch.linspace(-4, 4, 2000, dtype=torch.float64)
    y, log_slope = rational_quadratic_spline(x, raw, B)
    x_back, inverse_log_slope = rational_quadratic_spline(y, raw, B, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(
        log_slope + inverse_log_slope, torch.zeros_like(x), atol=1e-8, rtol=0
    )


@pytest.mark.parametrize("where", ["interval", "bin_edges", "tails", "all_tails"])
def test_float32_round_trip_within_1e_5(where):
    """inverse(forward(x)) within 1e-5 in float32 for splines of a conditioner's size
    (parameters ~ N(0, 0.5^2): slopes in about [0.02, 50])."""
    raw = _raw(3000, 0.5)
    if where == "interval":
        x = torch.linspace(-B, B, 3000)
    elif where == "bin_edges":
        x = _knot_inputs(raw[:333]).flatten()[:3000]
        raw = raw[: len(x)]
    elif where == "tails":
        x = torch.cat((torch.linspace(-50, -B - 1e-3, 1500), torch.linspace(B + 1e-3, 50, 1500)))
    else:
        x = torch.linspace(B + 1e-3, 7.0, 3000) * torch.where(torch.arange(3000) % 2 == 0, 1, -1)
    y, log_slope = rational_quadratic_spline(x, raw, B)
    x_back, inverse_log_slope = rational_quadratic_spline(y, raw, B, inverse=True)
    assert torch.isfinite(y).all() and torch.isfinite(log_slope).all()
    assert (x_back - x).abs().max() <= 1e-5
    assert (log_slope + inverse_log_slope).abs().max() <= 1e-4
    if where in ("tails", "all_tails"):
        assert torch.equal(y, x) and torch.equal(log_slope, torch.zeros_like(x))


def test_float32_round_trip_of_any_spline_is_as_good_as_its_slope_allows():
    """For extreme parameters (slopes down to 1e-6) no float32 inverse can recover x to 1e-5:
    y holds log2(1 / eps) bits, so x is known to eps * |y| / slope. The round trip must stay
    within a few dozen times that (the forward's own rounding of the knots and of y counts too), as
    a correct inverse does; a wrong root is off by O(bin width)."""
    raw = _raw(5000, 3.0)
    x = torch.linspace(-B, B, 5000)
    y, log_slope = rational_quadratic_spline(x, raw, B)
    x_back, _ = rational_quadratic_spline(y, raw, B, inverse=True)
    allowed = 32 * EPS32 * B * (1 + torch.exp(-log_slope))
    assert ((x_back - x).abs() <= allowed).all()


def test_monotone_in_each_coordinate_and_continuous_at_the_bounds():
    raw = _raw(1, 3.0).expand(20001, -1)
    x = torch.linspace(-B - 1, B + 1, 20001, dtype=torch.float32)
    y, _ = rational_quadratic_spline(x, raw, B)
    assert (y[1:] >= y[:-1]).all()  # float32: slopes of 1e-6 leave neighbours equal
    y64, _ = rational_quadratic_spline(x.double(), raw.double(), B)
    assert (y64[1:] > y64[:-1]).all()
    # at +-B the spline meets the identity tails: value and slope (C1)
    edges = torch.tensor([-B, B], dtype=torch.float64).requires_grad_()
    y_edge, log_slope = rational_quadratic_spline(edges, raw[:2].double(), B)
    torch.testing.assert_close(y_edge, edges.detach())
    torch.testing.assert_close(log_slope, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("inverse", [False, True])
def test_gradients_are_finite_everywhere_even_in_all_tail_batches(inverse):
    """The thrown-away branch of torch.where must not leak NaN into the gradients: inputs
    at the knots, at +-B, far in the tails, and a batch with nothing inside."""
    raw = _raw(8, 3.0).requires_grad_()
    for x in (
        torch.tensor([-B, B, 0.0, -1e4, 1e4, 2.9999, -2.9999, 1e-7]),
        torch.tensor([5.0, -5.0, 30.0, -30.0, 1e30, -1e30, 3.5, -3.5]),
        _knot_inputs(raw.detach())[:, 3],
    ):
        x = x.clone().requires_grad_()
        y, log_slope = rational_quadratic_spline(x, raw, B, inverse)
        grad_x, grad_raw = torch.autograd.grad((y + log_slope).sum(), (x, raw))
        assert torch.isfinite(grad_x).all() and torch.isfinite(grad_raw).all()
        assert torch.isfinite(y).all() and torch.isfinite(log_slope).all()


def test_a_coupling_whose_batch_lies_in_the_tails_is_the_identity():
    torch.manual_seed(0)
    layer = SplineCoupling(torch.tensor([1, 0, 1, 0]), MLP(2, 2 * params_per_coordinate(4), 8), 4)
    for p in layer.parameters():
        torch.nn.init.normal_(p)
    x = torch.tensor([[0.3, 4.0, -0.2, -7.0], [1.0, -3.5, 2.0, 100.0]])
    y, logdet = layer(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(logdet, torch.zeros(2))


@pytest.mark.parametrize(
    ("num_bins", "tail_bound", "message"),
    [
        (1, 3.0, "model.num_bins must be an integer >= 2, got 1"),
        (2.5, 3.0, "model.num_bins must be an integer >= 2, got 2.5"),
        (
            8,
            0.0,
            "model.tail_bound must be a positive number (the spline acts on [-B, B]), got 0.0",
        ),
        (8, -1, "model.tail_bound must be a positive number"),
        (1000, 3.0, "model.num_bins=1000 is too many"),
    ],
)
def test_a_spline_that_cannot_exist_is_one_sentence(num_bins, tail_bound, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_spline(num_bins, tail_bound)


def test_bin_scale_multiplies_the_raw_widths_and_heights_only():
    """bin_scale s is the same spline as a conditioner whose width and height outputs are
    multiplied by s (the derivatives untouched): in layout p * F + f, the first 2K * F."""
    torch.manual_seed(0)
    mask, k, moved = torch.tensor([1, 0, 1, 0, 0]), 4, 3
    net = MLP(2, moved * params_per_coordinate(k), 8, zero_init_output=False)

    class Scaled(torch.nn.Module):
        def forward(self, x):
            h = net(x)
            return torch.cat((h[:, : 2 * k * moved] * 0.3, h[:, 2 * k * moved :]), dim=1)

    x = 2.0 * torch.randn(64, 5)
    scaled = SplineCoupling(mask, net, k, B, bin_scale=0.3)
    reference = SplineCoupling(mask, Scaled(), k, B)
    z, log_det = scaled(x)
    z_ref, log_det_ref = reference(x)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(log_det, log_det_ref)
    assert (z - SplineCoupling(mask, net, k, B)(x)[0]).abs().max() > 1e-3  # it does something


def test_the_nsf_preset_scales_bins_and_starts_its_lu_layers_at_the_identity():
    """model=nsf: raw widths and heights / sqrt(hidden width) (scale_bins, the config's
    default; a stored config without the key keeps 1), LU layers at the identity."""
    from genflow.bijections.conv1x1 import InvertibleConv1x1
    from genflow.models.nsf import NSF

    for kind in ("coupling", "autoregressive"):
        model = NSF((4,), kind=kind, hidden_features=16, num_layers=2, scale_bins=True)
        scales = {m.bin_scale for m in model.modules() if hasattr(m, "bin_scale")}
        assert scales == {0.25}
        old = NSF((4,), kind=kind, hidden_features=16, num_layers=2)
        assert {m.bin_scale for m in old.modules() if hasattr(m, "bin_scale")} == {1.0}
        for layer in (m for m in model.modules() if isinstance(m, InvertibleConv1x1)):
            torch.testing.assert_close(layer.weight(), torch.eye(4))
    image = NSF((1, 4, 4), levels=4, hidden_channels=16, steps_per_level=1, scale_bins=True)
    assert {m.bin_scale for m in image.modules() if hasattr(m, "bin_scale")} == {0.25}
