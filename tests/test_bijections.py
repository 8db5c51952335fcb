"""The bijection harness (DESIGN.md section 6), in float64, for every invertible layer."""

from __future__ import annotations

import pytest
import torch

from genflow.bijections import AffineCoupling, Compose, FactorOut, Inverted, Logit, Squeeze
from genflow.bijections.coupling import alternating_mask, channel_mask, checkerboard_mask
from genflow.models.realnvp import multiscale_flow, vector_flow
from genflow.nn import MLP, ResNet


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised last layers make couplings the identity; perturb to test real maps."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


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
}


def _case(name):
    factory, shape, sampler = CASES[name]
    torch.manual_seed(1)
    layer = _perturbed(factory().double())
    batch = 3
    if sampler == "unit":
        x = torch.rand(batch, *shape, dtype=torch.float64) * 0.98 + 0.01
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
