"""The bijection harness for the amortised posterior flows, with context, in float64."""

from __future__ import annotations

import pytest
import torch

from genflow.bijections.base import InverseNotAvailable
from genflow.bijections.planar import Planar
from genflow.bijections.radial import Radial
from genflow.bijections.sylvester import Sylvester
from genflow.models import posteriors

FEATURES, CONTEXT = 5, 7

# name -> builder(features, context_features); every posterior of model/posterior
CASES = {
    "planar": lambda: posteriors.planar(FEATURES, CONTEXT, num_flows=3),
    "radial": lambda: posteriors.radial(FEATURES, CONTEXT, num_flows=3),
    "householder": lambda: posteriors.householder(FEATURES, CONTEXT, num_flows=3),
    "iaf": lambda: posteriors.iaf(FEATURES, CONTEXT, num_flows=2, hidden_features=16),
    "iaf_gated": lambda: posteriors.iaf(
        FEATURES, CONTEXT, num_flows=2, hidden_features=16, gated=True
    ),
    "nsf": lambda: posteriors.nsf(FEATURES, CONTEXT, num_flows=2, hidden_features=16, num_bins=4),
    "sylvester_orthogonal": lambda: posteriors.sylvester(
        FEATURES, CONTEXT, num_flows=3, variant="orthogonal", num_ortho_vectors=3
    ),
    "sylvester_householder": lambda: posteriors.sylvester(
        FEATURES, CONTEXT, num_flows=3, variant="householder", num_householder=2
    ),
    "sylvester_triangular": lambda: posteriors.sylvester(
        FEATURES, CONTEXT, num_flows=3, variant="triangular"
    ),
}
INVERTIBLE = {"householder", "iaf", "iaf_gated", "nsf"}


def _case(name, batch=4):
    torch.manual_seed(3)
    flow = CASES[name]().double()
    with torch.no_grad():  # MADE starts at the identity: perturb so the test is of a real map
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = torch.randn(batch, FEATURES, dtype=torch.float64)
    context = torch.randn(batch, CONTEXT, dtype=torch.float64)
    return flow, z, context


@pytest.mark.parametrize("name", CASES)
def test_logdet_matches_autograd_jacobian_with_context(name):
    flow, z, context = _case(name)
    out, logdet = flow(z, context)
    assert out.shape == z.shape and logdet.shape == (z.shape[0],)
    for i in range(z.shape[0]):
        ci = context[i : i + 1]

        def f(zi, ci=ci):
            return flow(zi.unsqueeze(0), ci)[0].squeeze(0)

        jacobian = torch.autograd.functional.jacobian(f, z[i])
        sign, logabsdet = torch.linalg.slogdet(jacobian)
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabsdet, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", CASES)
def test_every_parameter_and_the_context_get_a_gradient(name):
    flow, z, context = _case(name)
    context.requires_grad_(True)
    out, logdet = flow(z, context)
    weights = torch.randn_like(out)  # a norm would be blind to rotations (Householder)
    ((weights * out).sum() + logdet.sum()).backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


@pytest.mark.parametrize("name", CASES)
def test_inverse_where_one_exists(name):
    flow, z, context = _case(name)
    out, logdet = flow(z, context)
    if name not in INVERTIBLE:
        with pytest.raises(InverseNotAvailable):
            flow.inverse(out, context)
        return
    back, inverse_logdet = flow.inverse(out, context)
    torch.testing.assert_close(back, z, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(
        logdet + inverse_logdet, torch.zeros_like(logdet), atol=1e-10, rtol=0
    )


def _wild_context(n=2000, scale=30.0):
    """Contexts that drive the raw parameters far out, where constraints matter."""
    torch.manual_seed(0)
    return scale * torch.randn(n, CONTEXT, dtype=torch.float64)


def test_planar_constraint_holds_for_random_parameters():
    layer = Planar(FEATURES, CONTEXT).double()
    u_hat, w, _ = layer.constrained(_wild_context())
    wu = (w * u_hat).sum(1)
    assert (wu >= -1 - 1e-9).all()  # raw w^T u spans about -1e4..1e4 here
    assert ((w * layer.params(_wild_context())[:, :FEATURES]).sum(1) < -1).any()
    z = 10 * torch.randn(2000, FEATURES, dtype=torch.float64)
    _, logdet = layer(z, _wild_context())
    assert torch.isfinite(logdet).all()


def test_radial_constraint_holds_for_random_parameters():
    layer = Radial(FEATURES, CONTEXT).double()
    _, alpha, beta = layer.constrained(_wild_context())
    assert (alpha > 0).all() and (beta >= -alpha).all()


@pytest.mark.parametrize("variant", ["orthogonal", "householder", "triangular"])
def test_sylvester_conditions_hold_for_random_parameters(variant):
    layer = Sylvester(FEATURES, CONTEXT, variant, num_vectors=3, num_householder=3).double()
    r, r_tilde, _, q = layer.parameters_for(_wild_context(200, 3.0))
    diag = torch.diagonal(r, dim1=1, dim2=2) * torch.diagonal(r_tilde, dim1=1, dim2=2)
    assert (diag > -1).all()
    assert torch.equal(r, r.triu()) and torch.equal(r_tilde, r_tilde.triu())
    if q is not None:  # orthonormal columns, to float64 precision
        eye = torch.eye(q.shape[2], dtype=q.dtype).expand(q.shape[0], -1, -1)
        torch.testing.assert_close(q.transpose(1, 2) @ q, eye, atol=1e-12, rtol=0)


def test_posteriors_need_the_context():
    flow, z, _ = _case("planar")
    with pytest.raises(ValueError, match="context"):
        flow(z)


def test_sylvester_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_ortho_vectors"):
        Sylvester(4, 3, "orthogonal", num_vectors=5)
    with pytest.raises(ValueError, match="variant"):
        Sylvester(4, 3, "diagonal")


@pytest.mark.parametrize("name", CASES)
def test_one_context_per_example_serves_its_k_samples(name):
    """A VAE passes B contexts for B * k samples (example-major); the parameters are shared."""
    flow, _, context = _case(name, batch=3)
    z = torch.randn(3 * 4, FEATURES, dtype=torch.float64)
    shared, shared_logdet = flow(z, context)
    repeated, repeated_logdet = flow(z, context.repeat_interleave(4, dim=0))
    torch.testing.assert_close(shared, repeated)
    torch.testing.assert_close(shared_logdet, repeated_logdet)
    with pytest.raises(ValueError, match="cannot share"):
        flow(z[:11], context)
