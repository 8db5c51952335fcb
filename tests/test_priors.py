"""VAE priors: each is a normalised density whose samples follow it, and the VAE's bounds stay
exact under it (a linear-Gaussian decoder, whose evidence is known)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import perturbed
from torch import nn

from genflow.models import priors
from genflow.models.vae import VAE

DZ = 2
# parameter noise that makes the flow priors clearly non-Gaussian yet smooth enough for the
# grid (a MADE's unbounded shifts make sharper densities at the same noise)
FLOW_NOISE = {"realnvp": 0.2, "maf": 0.1, "nsf": 0.15}


def _tiny_encode(shape=(1, 2, 2)):
    """A fixed affine map from pseudo-inputs to (mean, log_scale): the VampPrior's encoder."""
    generator = torch.Generator().manual_seed(3)
    features = math.prod(shape)
    a = torch.randn(features, DZ, generator=generator, dtype=torch.float64) * 2
    b = torch.randn(features, DZ, generator=generator, dtype=torch.float64)

    def encode(u):
        flat = u.flatten(1).double()
        return flat @ a, 0.6 * torch.tanh(flat @ b) - 0.3

    return encode


PRIORS = {
    "standard": lambda: priors.StandardPrior(DZ),
    "mog": lambda: perturbed(priors.MixturePrior(DZ, num_components=5), 0.4),
    "vampprior": lambda: perturbed(priors.VampPrior(DZ, (1, 2, 2), num_components=6), 0.5),
    "flow_realnvp": lambda: perturbed(
        priors.FlowPrior(DZ, "realnvp", 4, 16), FLOW_NOISE["realnvp"]
    ),
    "flow_maf": lambda: perturbed(priors.FlowPrior(DZ, "maf", 4, 16), FLOW_NOISE["maf"]),
    "flow_nsf": lambda: perturbed(priors.FlowPrior(DZ, "nsf", 4, 16), FLOW_NOISE["nsf"]),
}


def _grid(limit=9.0, n=600):
    axis = torch.linspace(-limit, limit, n, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)
    return z, (axis[1] - axis[0]).item() ** 2


@pytest.mark.parametrize("name", PRIORS)
def test_every_prior_is_normalised_and_its_samples_follow_its_density(name):
    torch.manual_seed(0)
    prior = PRIORS[name]().double()
    encode = _tiny_encode()
    z, area = _grid()
    with torch.no_grad():
        density = prior.log_prob(z, encode=encode).exp() * area
        torch.testing.assert_close(density.sum().item(), 1.0, atol=2e-3, rtol=0)
        samples = prior.sample(100_000, encode=encode)
    assert samples.shape == (100_000, DZ)
    # the first two moments of the samples against the density's, integrated on the grid
    mean = (density[:, None] * z).sum(0)
    second = (density[:, None, None] * z[:, :, None] * z[:, None, :]).sum(0)
    error = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - mean).abs() < 5 * error + 2e-3).all(), (samples.mean(0), mean)
    sample_second = (samples[:, :, None] * samples[:, None, :]).mean(0)
    torch.testing.assert_close(sample_second, second, atol=0.03 * second.abs().max(), rtol=0)
    # the mass of each quadrant, so a mixture whose weights are ignored is caught too
    for sx in (-1, 1):
        for sy in (-1, 1):
            inside = (sx * z[:, 0] > 0) & (sy * z[:, 1] > 0)
            drawn = ((sx * samples[:, 0] > 0) & (sy * samples[:, 1] > 0)).double().mean()
            assert abs(drawn - density[inside].sum()) < 5e-3


@pytest.mark.parametrize("kind", ["realnvp", "maf", "nsf"])
def test_flow_prior_counts_its_log_det(kind):
    """Without the log-det, or with its sign flipped, the same flow is not normalised: the
    normalisation test above can tell."""
    # fixed maps, each one whose dropped log-det moves the mass by > 0.05 (not every map does)
    torch.manual_seed(1 if kind == "nsf" else 0)
    # splines near the identity hide a dropped log-det: perturb them further, on a finer grid
    noise = {**FLOW_NOISE, "nsf": 0.25}[kind]
    prior = perturbed(priors.FlowPrior(DZ, kind, 4, 16), noise).double()
    z, area = _grid(n=1500)
    with torch.no_grad():
        noise, logdet = prior.flow(z)
        base = prior.normal.log_prob(noise)
        assert abs((base + logdet).exp().sum().item() * area - 1) < 2e-3
        assert abs((base - logdet).exp().sum().item() * area - 1) > 0.05
        assert abs(base.exp().sum().item() * area - 1) > 0.05


# -- the VAE's bounds under each prior, on a linear-Gaussian decoder ---------------------
D, SIGMA = 4, 0.5


def _linear_vae(prior):
    vae = VAE((D,), None, DZ, hidden_features=8, gaussian_scale=SIGMA, prior=prior).double()
    torch.manual_seed(5)
    weight = 0.8 * torch.randn(D, DZ, dtype=torch.float64)
    bias = torch.randn(D, dtype=torch.float64)
    linear = nn.Linear(DZ, D).double()
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    vae.decoder = nn.Sequential(linear, nn.Unflatten(1, (1, D, 1)))
    return vae, weight, bias


def _mixture_evidence(x, weight, bias, logits, mean, log_scale):
    """p(x) = sum_k w_k N(x; W m_k + b, W S_k^2 W^T + SIGMA^2 I), in closed form."""
    terms = []
    for k in range(len(logits)):
        cov = weight @ torch.diag(torch.exp(2 * log_scale[k])) @ weight.T
        cov = cov + SIGMA**2 * torch.eye(D, dtype=torch.float64)
        normal = torch.distributions.MultivariateNormal(weight @ mean[k] + bias, cov)
        terms.append(normal.log_prob(x) + torch.log_softmax(logits, 0)[k])
    return torch.logsumexp(torch.stack(terms), 0)


def _grid_evidence(x, weight, bias, prior):
    """p(x) = integral of N(x; W z + b, SIGMA^2 I) p(z) dz on a fine grid."""
    z, area = _grid(limit=10.0, n=800)
    log_pz = prior.log_prob(z)
    mean = z @ weight.T + bias  # (G, D)
    log_px_z = (-0.5 * ((x[:, None, :] - mean) / SIGMA) ** 2).sum(2) - D * (
        math.log(SIGMA) + 0.5 * math.log(2 * math.pi)
    )
    return torch.logsumexp(log_px_z + log_pz, dim=1) + math.log(area)


@pytest.mark.parametrize("name", ["mog", "vampprior", "flow_realnvp", "flow_maf"])
def test_importance_weights_average_to_the_evidence_under_each_prior(name):
    """E_q[p(x|z) p(z) / q(z|x)] = p(x) for any q: with a learnable prior the weights use the
    prior's own log-density, and the Monte Carlo KL replaces the closed form."""
    torch.manual_seed(2)
    builders = {
        "mog": lambda: priors.MixturePrior(DZ, 3),
        "vampprior": lambda: priors.VampPrior(DZ, (D,), 4),
        "flow_realnvp": lambda: priors.FlowPrior(DZ, "realnvp", 4, 16),
        "flow_maf": lambda: priors.FlowPrior(DZ, "maf", 4, 16),
    }
    prior = perturbed(builders[name](), FLOW_NOISE.get(name.removeprefix("flow_"), 0.4))
    vae, weight, bias = _linear_vae(prior)
    assert not vae.analytic_kl
    x = torch.randn(3, D, dtype=torch.float64)
    with torch.no_grad():
        if name == "mog":
            truth = _mixture_evidence(x, weight, bias, prior.logits, prior.mean, prior.log_scale)
        elif name == "vampprior":
            mean, log_scale = vae._q_gaussian(prior.pseudo_inputs)
            truth = _mixture_evidence(x, weight, bias, prior.logits, mean, log_scale)
        else:
            truth = _grid_evidence(x, weight, bias, prior)
        # a broad fixed q(z|x): N(0, 3^2 I) covers every prior's mass, so the weights are tame
        mean = torch.zeros(3, DZ, dtype=torch.float64)
        log_scale = torch.full((3, DZ), math.log(3.0), dtype=torch.float64)
        context = torch.zeros(3, 8, dtype=torch.float64)
        k = 100_000
        torch.manual_seed(7)
        log_px_z, log_pz, log_q = vae._log_terms(x, mean, log_scale, context, k)
        vae.prior = priors.StandardPrior(DZ).double()  # the same draws, scored under N(0, I)
        torch.manual_seed(7)
        _, log_pz_standard, _ = vae._log_terms(x, mean, log_scale, context, k)

    def mean_ratio(log_pz):  # mean of w / p(x) per example, and its standard error
        ratio = (log_px_z + log_pz - log_q - truth[:, None]).exp()
        return ratio.mean(1), ratio.std(1) / math.sqrt(k)

    estimate, error = mean_ratio(log_pz)
    assert ((estimate - 1).abs() < 4 * error + 0.005).all(), (estimate, error)
    wrong, wrong_error = mean_ratio(log_pz_standard)  # the prior term matters: the test can tell
    assert ((wrong - 1).abs() > 4 * wrong_error + 0.05).any(), wrong


def test_vampprior_pseudo_inputs_start_at_the_first_training_images():
    vae = VAE((1, 8, 8), 17, 4, hidden_features=8, prior=priors.VampPrior(4, (1, 8, 8), 5))
    batch = torch.randint(0, 17, (3, 1, 8, 8))
    vae.initialize(batch)
    expected = batch[[0, 1, 2, 0, 1]].float() / 16  # cycling through a batch smaller than K
    torch.testing.assert_close(vae.prior.pseudo_inputs.detach(), expected)


@pytest.mark.parametrize("kind", ["mog", "flow"])
def test_aggregate_fit_trains_the_prior_on_the_codes_and_leaves_the_vae_as_under_n01(kind):
    """model.prior.fit=aggregate: the encoder and decoder get exactly the gradients of the
    standard-prior VAE; the prior gets those of the codes' cross-entropy under it alone."""

    def build(prior):
        torch.manual_seed(0)
        return VAE((1, 4, 4), 5, DZ, hidden_features=8, prior=prior).double()

    def make_prior(fit):
        if kind == "mog":
            return priors.MixturePrior(DZ, num_components=3, fit=fit)
        return perturbed(priors.FlowPrior(DZ, "realnvp", 2, 8, fit=fit), 0.2)

    standard, fitted, joint = build(None), build(make_prior("aggregate")), build(make_prior("elbo"))
    fitted.prior.double()
    joint.prior.load_state_dict(fitted.prior.state_dict())
    x = torch.randint(0, 5, (6, 1, 4, 4))
    grads = {}
    for name, vae in (("standard", standard), ("fitted", fitted), ("joint", joint)):
        torch.manual_seed(1)
        vae(x).loss.backward()
        grads[name] = {n: p.grad for n, p in vae.named_parameters() if not n.startswith("prior.")}
    for n, g in grads["standard"].items():
        torch.testing.assert_close(grads["fitted"][n], g, msg=n)
    assert any(not torch.allclose(grads["joint"][n], g) for n, g in grads["standard"].items())
    torch.manual_seed(1)
    mean, log_scale, context = fitted.q_params(x)
    codes = fitted.draw_posterior(mean, log_scale, context, 1)[0].flatten(0, 1).detach()
    params = list(fitted.prior.parameters())
    expected = torch.autograd.grad(fitted.bpd(-fitted.prior.log_prob(codes).mean()), params)
    for p, e in zip(params, expected, strict=True):
        assert e.abs().sum() > 0
        torch.testing.assert_close(p.grad, e)


def test_aggregate_fit_needs_a_prior_of_its_own():
    with pytest.raises(ValueError, match="model.prior.fit=aggregate needs a prior"):
        priors.VampPrior(DZ, (1, 2, 2), 4, fit="aggregate")
    with pytest.raises(ValueError, match="the standard normal has nothing to fit"):
        priors.StandardPrior(DZ, fit="aggregate")
    with pytest.raises(ValueError, match="model.prior.fit must be one of elbo, aggregate"):
        priors.MixturePrior(DZ, fit="posterior")
