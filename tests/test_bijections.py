"""The bijection harness, in float64, for every invertible layer: inverse round trip, log-det
against the autograd Jacobian, gradients to every parameter (and a check that no layer is left out)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import perturbed

from genflow.bijections import AffineCoupling, Compose, FactorOut, Inverted, Logit, Squeeze
from genflow.bijections.actnorm import ActNorm
from genflow.bijections.autoregressive import MaskedAffineAutoregressive
from genflow.bijections.conv1x1 import InvertibleConv1x1
from genflow.bijections.coupling import (
    AdditiveCoupling,
    ChannelCoupling,
    CheckerboardCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from genflow.bijections.elementwise import BatchNormFlow, DiagonalScaling, Standardize
from genflow.bijections.ode import ODEFlow
from genflow.bijections.permutation import Permutation
from genflow.bijections.reshape import Flatten
from genflow.bijections.spline import MaskedSplineAutoregressive, SplineCoupling
from genflow.models.glow import glow_flow
from genflow.models.maf import MAF
from genflow.models.nice import NICE
from genflow.models.nsf import spline_image_flow, spline_vector_flow
from genflow.models.realnvp import RealNVP, multiscale_flow, vector_flow
from genflow.nn import MLP, ResNet
from genflow.nn.conv_net import ActNormConv2d, ConvNet, ZeroConv, zero_conv
from genflow.nn.made import MADE
from genflow.nn.velocity import VelocityMLP

ODE_SOLVERS = ("solver", "sample_solver", "train_solver")
ODE_TIGHT = {"method": "dopri5", "rtol": 1e-12, "atol": 1e-12}


def _batch_norm_in_eval_mode():
    """Batch statistics couple examples; as a fixed bijection it runs on running statistics."""
    layer = BatchNormFlow(4)
    layer.running_mean.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
    layer.running_var.copy_(torch.tensor([0.3, 2.0, 1.0, 0.7]))
    return layer.eval()


def _image_batch_norm_in_eval_mode():
    layer = BatchNormFlow(3)
    layer.running_mean.copy_(torch.tensor([0.5, -1.0, 0.2]))
    layer.running_var.copy_(torch.tensor([0.3, 2.0, 0.7]))
    return layer.eval()


def _standardize():
    layer = Standardize((3,))
    layer.set(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 4.0, 1.5]))
    return layer


def _image_coupling(mask):
    c = mask.shape[0]
    return AffineCoupling(
        mask, ResNet(c + 1, 2 * c, hidden_channels=8, num_blocks=1), append_mask=True
    )


# name -> (factory, event shape, input sampler)
CASES = {
    "logit": (lambda: Logit(0.05), (3, 4), "unit"),
    "logit_no_alpha": (lambda: Logit(0.0), (5,), "unit"),
    "squeeze": (lambda: Squeeze(), (2, 4, 4), "normal"),
    "unsqueeze": (lambda: Inverted(Squeeze()), (8, 2, 2), "normal"),
    "coupling_vector": (
        lambda: AffineCoupling(alternating_mask(5), MLP(5, 10, 16, 2)),
        (5,),
        "normal",
    ),
    "coupling_checkerboard": (
        lambda: _image_coupling(checkerboard_mask(2, 4, 4, 1)),
        (2, 4, 4),
        "normal",
    ),
    "coupling_checkerboard_gathered": (
        lambda: CheckerboardCoupling(2, ResNet(3, 4, hidden_channels=8, num_blocks=1), parity=1),
        (2, 3, 4),
        "normal",
    ),
    "coupling_channel": (lambda: _image_coupling(channel_mask(4, 2, 2, 0)), (4, 2, 2), "normal"),
    "factor_out": (
        lambda: FactorOut(AffineCoupling(alternating_mask(2), MLP(2, 4, 8, 1)).float(), split=1),
        (3,),
        "normal",
    ),
    "compose": (
        lambda: Compose([Logit(0.1), AffineCoupling(alternating_mask(4, 1), MLP(4, 8, 8, 1))]),
        (4,),
        "unit",
    ),
    "realnvp_vector": (lambda: vector_flow(4, 4, 16, 2, 0.0), (4,), "normal"),
    "realnvp_multiscale": (lambda: multiscale_flow((1, 4, 4), 2, 8, 1, 0.0), (1, 4, 4), "normal"),
    "realnvp_multiscale_gathered": (
        lambda: multiscale_flow((1, 4, 4), 2, 8, 1, 0.0, checkerboard="gathered"),
        (1, 4, 4),
        "normal",
    ),
    "additive_coupling": (
        lambda: AdditiveCoupling(alternating_mask(5), MLP(5, 5, 16, 2)),
        (5,),
        "normal",
    ),
    "diagonal_scaling": (lambda: DiagonalScaling((5,)), (5,), "normal"),
    "flatten": (lambda: Flatten((2, 2, 2)), (2, 2, 2), "normal"),
    "permutation": (lambda: Permutation.random(6, seed=3), (6,), "normal"),
    "batch_norm_eval": (_batch_norm_in_eval_mode, (4,), "normal"),
    "batch_norm_image_eval": (_image_batch_norm_in_eval_mode, (3, 2, 2), "normal"),
    "realnvp_multiscale_batch_norm": (
        lambda: multiscale_flow((1, 4, 4), 2, 8, 1, 0.0, batch_norm=True).eval(),
        (1, 4, 4),
        "normal",
    ),
    "made_affine": (
        lambda: MaskedAffineAutoregressive(MADE(5, 16, 2, ordering="random")),
        (5,),
        "normal",
    ),
    "made_affine_sigmoid": (
        lambda: MaskedAffineAutoregressive(MADE(5, 16, 2, ordering="random"), scale="sigmoid"),
        (5,),
        "normal",
    ),
    "made_affine_gated": (
        lambda: MaskedAffineAutoregressive(MADE(5, 16, 2, ordering="random"), scale="gated"),
        (5,),
        "normal",
    ),
    "actnorm_image": (lambda: ActNorm(3), (3, 2, 2), "normal"),
    "actnorm_vector": (lambda: ActNorm(4), (4,), "normal"),
    "conv1x1": (lambda: InvertibleConv1x1(3), (3, 2, 2), "normal"),
    "channel_coupling_sigmoid": (lambda: ChannelCoupling(4, ConvNet(2, 4, 8)), (4, 3, 3), "normal"),
    "channel_coupling_additive": (
        lambda: ChannelCoupling(4, ConvNet(2, 2, 8), "additive"),
        (4, 3, 3),
        "normal",
    ),
    "glow_split_prior": (
        lambda: ChannelCoupling(5, zero_conv(3, 4), "exp", condition_on_second=True),
        (5, 2, 2),
        "normal",
    ),
    "nice_flow": (
        lambda: NICE((1, 2, 3), num_layers=4, hidden_features=16, hidden_layers=1).flow,
        (1, 2, 3),
        "normal",
    ),
    "maf_flow": (
        lambda: MAF((6,), num_layers=3, hidden_features=16, batch_norm=False).flow,
        (6,),
        "normal",
    ),
    "glow_flow": (lambda: glow_flow((1, 4, 4), 2, 2, 8), (1, 4, 4), "normal"),
    "lu_linear_vector": (lambda: InvertibleConv1x1(5), (5,), "normal"),
    "standardize": (_standardize, (3,), "normal"),
    "spline_coupling_vector": (
        lambda: SplineCoupling(alternating_mask(5), MLP(3, 2 * 14, 16, 2), 5, 2.0),
        (5,),
        "wide",
    ),
    "spline_coupling_channels": (
        lambda: SplineCoupling([1, 0, 1], ConvNet(2, 1 * 11, 8), 4, 2.0),
        (3, 2, 2),
        "wide",
    ),
    "spline_coupling_bin_scale": (
        lambda: SplineCoupling(alternating_mask(5), MLP(3, 2 * 14, 16, 2), 5, 2.0, bin_scale=0.25),
        (5,),
        "wide",
    ),
    "made_spline_bin_scale": (
        lambda: MaskedSplineAutoregressive(MADE(4, 16, 2, 3 * 6 - 1), 6, 2.0, bin_scale=0.25),
        (4,),
        "wide",
    ),
    "made_spline": (
        lambda: MaskedSplineAutoregressive(MADE(4, 16, 2, 3 * 6 - 1, ordering="random"), 6, 2.0),
        (4,),
        "wide",
    ),
    "nsf_vector_coupling": (
        lambda: spline_vector_flow(4, "coupling", 2, 16, 1, num_bins=4),
        (4,),
        "normal",
    ),
    "nsf_vector_coupling_mlp": (
        lambda: spline_vector_flow(
            3, "coupling", 3, 16, hidden_layers=1, conditioner="mlp", linear="permutation"
        ),
        (3,),
        "normal",
    ),
    "nsf_vector_autoregressive": (
        lambda: spline_vector_flow(4, "autoregressive", 2, 16, hidden_layers=1, num_bins=4),
        (4,),
        "normal",
    ),
    "nsf_image": (lambda: spline_image_flow((1, 4, 4), 2, 1, 8, 4, 3.0), (1, 4, 4), "normal"),
    "glow_flow_zero_logscale": (
        lambda: glow_flow((1, 4, 4), 2, 2, 8, zero_logscale=3.0),
        (1, 4, 4),
        "normal",
    ),
    "glow_flow_hidden_actnorm": (
        lambda: glow_flow((1, 4, 4), 2, 2, 8, hidden_actnorm=True),
        (1, 4, 4),
        "normal",
    ),
    # a continuous-time flow, its solver tight enough for the harness's float64 tolerances
    "ode_flow": (
        lambda: ODEFlow(VelocityMLP(3, 8, 2, 4), (3,), **dict.fromkeys(ODE_SOLVERS, ODE_TIGHT)),
        (3,),
        "normal",
    ),
    "glow_flow_additive": (
        lambda: glow_flow((2, 4, 4), 2, 1, 8, additive=True),
        (2, 4, 4),
        "normal",
    ),
}


def _case(name):
    factory, shape, sampler = CASES[name]
    torch.manual_seed(1)
    layer = perturbed(factory().double(), 0.2)
    batch = 3
    if sampler == "unit":
        x = torch.rand(batch, *shape, dtype=torch.float64) * 0.98 + 0.01
    elif sampler == "wide":  # splines: inside [-2, 2] and in both tails
        x = 1.6 * torch.randn(batch, *shape, dtype=torch.float64)
    else:
        x = torch.randn(batch, *shape, dtype=torch.float64)
    return layer, x


@pytest.mark.parametrize("name", CASES)
def test_inverse_and_logdets(name):
    layer, x = _case(name)
    y, logdet = layer(x)
    assert y.numel() == x.numel() and y.shape[0] == x.shape[0] and logdet.shape == (x.shape[0],)
    x_back, inv_logdet = layer.inverse(y)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logdet + inv_logdet, torch.zeros_like(logdet), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_logdet_matches_autograd_jacobian(name):
    layer, x = _case(name)
    _, logdet = layer(x)
    for i in range(x.shape[0]):
        xi = x[i : i + 1]

        def f(flat, xi=xi):
            return layer(flat.view_as(xi))[0].reshape(-1)

        jacobian = torch.autograd.functional.jacobian(f, xi.reshape(-1))
        sign, logabsdet = torch.linalg.slogdet(jacobian)
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabsdet, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", CASES)
def test_every_parameter_gets_a_gradient(name):
    layer, x = _case(name)
    x.requires_grad_(True)
    y, logdet = layer(x)
    (y.pow(2).sum() + logdet.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


def test_coupling_starts_as_identity():
    layer = _image_coupling(checkerboard_mask(1, 4, 4))
    x = torch.randn(2, 1, 4, 4)
    y, logdet = layer(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(logdet, torch.zeros(2))


@pytest.mark.parametrize("parity", [0, 1])
def test_gathered_checkerboard_keeps_the_mask_pixels_and_moves_the_others(parity):
    """The gathered coupling is a checkerboard coupling: the pixels that checkerboard_mask
    marks pass unchanged, each other pixel is scaled by itself alone and shifted by the fixed
    pixels (a triangular Jacobian with a diagonal moved block)."""
    torch.manual_seed(0)
    net = ResNet(3, 4, hidden_channels=8, num_blocks=1)
    layer = perturbed(CheckerboardCoupling(2, net, parity).double(), 0.2)
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    fixed = checkerboard_mask(2, 4, 6, parity).reshape(-1).bool()
    jacobian = torch.autograd.functional.jacobian(
        lambda v: layer(v.view_as(x))[0].reshape(-1), x.reshape(-1)
    )
    eye = torch.eye(len(fixed), dtype=torch.float64)
    torch.testing.assert_close(jacobian[fixed], eye[fixed])
    moved_block = jacobian[~fixed][:, ~fixed]
    torch.testing.assert_close(moved_block, torch.diag(torch.diagonal(moved_block)))
    assert (jacobian[~fixed][:, fixed] != 0).any()


def test_gathered_checkerboard_halves_the_conditioner_input():
    seen = []
    net = ResNet(2, 2, hidden_channels=4, num_blocks=1)
    net.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    CheckerboardCoupling(1, net)(torch.randn(2, 1, 8, 8))
    assert seen == [torch.Size([2, 2, 8, 4])]


def test_realnvp_activation_reaches_every_conditioner():
    """model.activation=relu (the peers' nonlinearity) leaves no GELU in any conditioner, and
    the flow is still exact; an unknown name is one clear error."""
    relu = RealNVP((1, 4, 4), levels=17, num_scales=2, hidden_channels=4, activation="relu")
    kinds = {type(m) for m in relu.flow.modules()}
    assert torch.nn.ReLU in kinds and torch.nn.GELU not in kinds
    gelu = RealNVP((1, 4, 4), levels=17, num_scales=2, hidden_channels=4)
    conditioners = [m for m in gelu.flow.modules() if isinstance(m, ResNet)]
    assert conditioners and all(
        any(isinstance(m, torch.nn.GELU) for m in net.modules()) for net in conditioners
    )
    with pytest.raises(ValueError, match="model.activation must be one of gelu, relu"):
        RealNVP((1, 4, 4), levels=17, hidden_channels=4, activation="tanh")


def test_zero_logscale_scales_the_zero_conv_output_and_keeps_old_state_dicts():
    """Glow's Conv2dZeros: the output is conv(x) * exp(3 * logs) per channel; without it the
    module is the plain convolution with the state dict of earlier versions."""
    conv = ZeroConv(2, 3, factor=3.0)
    torch.nn.init.normal_(conv.weight)
    with torch.no_grad():
        conv.logs.copy_(torch.tensor([0.1, -0.2, 0.0]).view(3, 1, 1))
    x = torch.randn(2, 2, 5, 5)
    plain = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    expected = plain * torch.exp(3 * torch.tensor([0.1, -0.2, 0.0])).view(1, 3, 1, 1)
    torch.testing.assert_close(conv(x), expected)
    assert set(zero_conv(2, 3).state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="model.zero_logscale must be >= 0"):
        ZeroConv(2, 3, factor=-1.0)


def test_hidden_actnorm_normalises_the_first_batch_and_is_conv_then_actnorm():
    """Glow's coupling network with ``actnorm``: each hidden convolution is bias-free and then
    ActNorm'd, (conv(x) + b) * exp(logs), with b and logs set by the first training batch to
    zero mean, unit variance per channel; folded into one convolution, the same function."""
    torch.manual_seed(0)
    net = ConvNet(2, 4, hidden_channels=6, actnorm=True)
    convs = [m for m in net.modules() if isinstance(m, ActNormConv2d)]
    assert len(convs) == 2 and all(c.bias is None for c in convs)
    seen = []
    hooks = [
        m.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
        for m in convs
    ]
    net(3.0 * torch.randn(16, 2, 5, 5) + 1.0)
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2
    for conv, (x, out) in zip(convs, seen, strict=True):
        torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.std((0, 2, 3)), torch.ones(6), atol=1e-4, rtol=0)
        with torch.no_grad():  # away from the initial values: still conv, then ActNorm
            conv.actnorm_bias.add_(torch.randn(6))
            conv.actnorm_logs.add_(0.3 * torch.randn(6))
            plain = torch.nn.functional.conv2d(x, conv.weight, None, padding=conv.padding)
            view = (1, -1, 1, 1)
            expected = (plain + conv.actnorm_bias.view(view)) * conv.actnorm_logs.exp().view(view)
            torch.testing.assert_close(conv(x), expected)
    assert not any(isinstance(m, ActNormConv2d) for m in ConvNet(2, 4, 6).modules())


def test_masks_partition_the_input():
    assert checkerboard_mask(1, 4, 4, 0).sum() == 8
    torch.testing.assert_close(
        checkerboard_mask(1, 4, 4, 0) + checkerboard_mask(1, 4, 4, 1), torch.ones(1, 4, 4)
    )
    torch.testing.assert_close(
        channel_mask(4, 2, 2, 0) + channel_mask(4, 2, 2, 1), torch.ones(4, 2, 2)
    )
    torch.testing.assert_close(alternating_mask(5, 0) + alternating_mask(5, 1), torch.ones(5))


def test_logit_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        Logit(0.5)


@pytest.mark.parametrize("ordering", ["natural", "reversed", "random"])
@pytest.mark.parametrize("hidden_degrees", ["sequential", "random"])
def test_made_is_autoregressive(ordering, hidden_degrees):
    """Output block k of feature i has zero gradient w.r.t. every input at or after i."""
    features = 6
    made = perturbed(
        MADE(
            features,
            24,
            2,
            output_multiplier=3,
            ordering=ordering,
            hidden_degrees=hidden_degrees,
            context_features=2,
            seed=4,
        ).double(),
        0.2,
    )
    x = torch.randn(features, dtype=torch.float64)
    context = torch.randn(1, 2, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: made(v[None], context)[0], x)
    degrees = made.degrees
    for k in range(3):
        block = jacobian[k * features : (k + 1) * features]
        allowed = degrees[None, :] < degrees[:, None]  # [i, j]: input j comes before output i
        assert (block[~allowed] == 0).all()
        assert (block[allowed] != 0).any()
    assert sorted(degrees.tolist()) == list(range(1, features + 1))


def test_maf_sequential_sampler_inverts_its_density_pass():
    torch.manual_seed(0)
    model = perturbed(
        MAF((5,), num_layers=3, hidden_features=16, permutation="random").double(), 0.2
    )
    z = torch.randn(4, 5, dtype=torch.float64)
    x, inverse_logdet = model.flow.inverse(z)
    z_again, logdet = model.flow(x)
    torch.testing.assert_close(z_again, z)
    torch.testing.assert_close(logdet, -inverse_logdet)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + logdet
    torch.testing.assert_close(model.log_prob(x), expected)


def test_actnorm_initialises_from_data_once_and_persists():
    torch.manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(64, 3, 4, 4)
    layer = ActNorm(3)
    y, _ = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    restored = ActNorm(3)
    restored.load_state_dict(layer.state_dict())
    assert bool(restored.initialized)
    y2, _ = restored(x + 10.0)  # a resumed layer must not initialise again
    torch.testing.assert_close(y2, layer(x + 10.0)[0])


def test_conv1x1_weight_is_invertible_and_logdet_is_slogdet():
    layer = perturbed(InvertibleConv1x1(5).double(), 0.2)
    sign, logabsdet = torch.linalg.slogdet(layer.weight())
    assert sign != 0
    torch.testing.assert_close(layer.log_s.sum(), logabsdet)


def test_sigmoid_affine_layer_never_expands_by_more_than_its_bound():
    """scale=sigmoid: data -> noise multiplies each coordinate's offset by at most 1.001, so
    the log-det of the density pass is at most D log 1.001 even far off the data."""
    layer = perturbed(MaskedAffineAutoregressive(MADE(6, 16, 2), scale="sigmoid"), 0.2)
    with torch.no_grad():
        layer.made.output.bias.add_(-50.0)  # pushes every raw scale towards expansion
    x = 1000.0 * torch.randn(64, 6)
    _, logdet = layer(x)
    assert (logdet <= 6 * math.log(1.001) + 1e-5).all()
    softclamp = perturbed(MaskedAffineAutoregressive(MADE(6, 16, 2)), 0.2)
    with torch.no_grad():
        softclamp.made.output.bias.add_(-50.0)
    # the soft clamp lets the same push expand each coordinate by up to e^5
    assert (softclamp(torch.randn(64, 6))[1] > 6 * 4.0).all()


def test_gated_affine_layer_is_iafs_gated_update():
    """scale=gated: the one-pass direction is y = g * x + (1 - g) * m with (m, raw) the MADE's
    two outputs and g = sigmoid(raw + 2) (Kingma et al. 2016, eq. 14), log-det sum log g."""
    torch.manual_seed(0)
    layer = perturbed(MaskedAffineAutoregressive(MADE(6, 16, 2), scale="gated"), 0.3).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    m, raw = layer.made(x).chunk(2, dim=1)
    gate = torch.sigmoid(raw + 2.0)
    y, logdet = layer(x)
    torch.testing.assert_close(y, gate * x + (1 - gate) * m)
    torch.testing.assert_close(logdet, gate.log().sum(1))


def test_batch_norm_on_images_normalises_each_channel_while_training():
    """In training the image batch norm uses each channel's statistics over batch and
    positions, and moves its running averages towards them; RealNVP with batch_norm trains
    and scores in evaluation mode on those running averages."""
    torch.manual_seed(0)
    layer = BatchNormFlow(2)
    x = torch.randn(16, 2, 3, 3) * torch.tensor([3.0, 0.5]).view(1, 2, 1, 1) + 4.0
    y, logdet = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    var = x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(logdet, (-0.5 * (var + 1e-5).log().sum() * 9).expand(16))
    torch.testing.assert_close(layer.running_mean, 0.05 * x.mean((0, 2, 3)))
    model = RealNVP((1, 8, 8), 17, hidden_channels=8, num_blocks=1, batch_norm=True)
    couplings = sum(isinstance(m, (AffineCoupling, CheckerboardCoupling)) for m in model.modules())
    assert sum(isinstance(m, BatchNormFlow) for m in model.modules()) == couplings == 10
    loss = model(torch.randint(0, 17, (8, 1, 8, 8))).loss
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert torch.isfinite(model.eval().log_prob(torch.randint(0, 17, (4, 1, 8, 8)))).all()


def test_logit_without_alpha_stays_finite_at_the_box_edges():
    """Uniform dequantization can give exactly 0, and (levels - 1 + u) / levels can round to
    1 in float32: with alpha = 0 both must still map to finite values and log-dets."""
    layer = Logit(0.0)
    x = torch.tensor([[0.0, 1.0, (255 + (1 - 2**-24)) / 256, 0.5]])
    y, logdet = layer(x)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert y[0, 0] < -80 and y[0, 1] > 15 and y[0, 3] == 0.0


def _all_bijection_classes() -> set[type]:
    """Every Bijection subclass genflow defines (importing every module that may hold one)."""
    import importlib
    import pkgutil

    import genflow
    from genflow.bijections.base import Bijection

    for module in pkgutil.walk_packages(genflow.__path__, "genflow."):
        if module.name.startswith(("genflow.bijections", "genflow.models", "genflow.nn")):
            importlib.import_module(module.name)
    found, todo = set(), [Bijection]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("genflow.") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_the_harness_covers_every_bijection():
    """A new layer cannot ship untested: each Bijection subclass must appear (as the layer or
    inside one) in this file's CASES or in the posterior harness's."""
    from test_posteriors import CASES as POSTERIOR_CASES

    covered = set()
    for factory, *_ in CASES.values():
        covered |= {type(m) for m in factory().modules()}
    for factory in POSTERIOR_CASES.values():
        covered |= {type(m) for m in factory().modules()}
    missing = sorted(c.__qualname__ for c in _all_bijection_classes() - covered)
    assert not missing, f"bijections without a harness case: {missing}"
