"""VAE truths: the bounds on a linear-Gaussian model, the KL, the likelihoods, the objective."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genflow.distributions.likelihoods import build_likelihood
from genflow.models import posteriors
from genflow.models.vae import VAE, gaussian_kl

D, DZ, SIGMA = 4, 2, 0.5


def _linear_gaussian(weight: torch.Tensor, bias: torch.Tensor, posterior=None) -> VAE:
    """p(z) = N(0, I), p(x|z) = N(W z + b, SIGMA^2 I): log p(x) = log N(x; b, W W^T + SIGMA^2 I)."""
    vae = VAE((D,), None, DZ, hidden_features=8, gaussian_scale=SIGMA, posterior=posterior)
    vae = vae.double()
    linear = nn.Linear(DZ, D).double()
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    vae.decoder = nn.Sequential(linear, nn.Unflatten(1, (1, D, 1)))
    return vae


def _log_evidence(x, weight, bias):
    cov = weight @ weight.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(bias, cov).log_prob(x)


def _exact_posterior(x, weight, bias):
    """The true posterior N(mean, cov) of the linear-Gaussian model."""
    precision = torch.eye(DZ, dtype=torch.float64) + weight.T @ weight / SIGMA**2
    cov = torch.linalg.inv(precision)
    mean = (x - bias) @ weight @ cov / SIGMA**2
    return mean, cov


def _use_posterior(vae, mean, log_scale):
    """Replace the encoder by a fixed diagonal Gaussian q(z|x)."""
    vae.q_params = lambda x: (mean, log_scale, torch.zeros(len(x), 8, dtype=torch.float64))


def test_exact_posterior_makes_every_bound_equal_log_evidence():
    torch.manual_seed(0)
    # orthogonal columns: the true posterior is diagonal, so q can be exact
    weight = torch.linalg.qr(torch.randn(D, DZ, dtype=torch.float64)).Q * torch.tensor([1.5, 0.7])
    bias = torch.randn(D, dtype=torch.float64)
    x = torch.randn(5, D, dtype=torch.float64)
    vae = _linear_gaussian(weight, bias)
    mean, cov = _exact_posterior(x, weight, bias)
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=1e-12)
    _use_posterior(vae, mean, 0.5 * torch.diagonal(cov).log().expand(5, DZ))
    truth = _log_evidence(x, weight, bias)
    for k in (1, 7, 50):  # every log weight is log p(x): the bound has no slack, for any k
        result = vae.importance_weighted(x, k)
        torch.testing.assert_close(-result["nll"], truth, atol=1e-10, rtol=0)
    # the reported elbo = -(recon, Monte Carlo) - (kl, closed form): exact only on average
    result = vae.importance_weighted(x, 20_000)
    torch.testing.assert_close(result["elbo"], truth, atol=0.05, rtol=0)


def test_elbo_below_iwae_below_log_evidence_and_iwae_rises_with_k():
    torch.manual_seed(1)
    weight = torch.randn(D, DZ, dtype=torch.float64)
    bias = torch.randn(D, dtype=torch.float64)
    x = torch.randn(1, D, dtype=torch.float64)
    vae = _linear_gaussian(weight, bias)
    mean, cov = _exact_posterior(x, weight, bias)
    # a mean-field q that is off: the true posterior is correlated, and the mean is shifted
    replicates = 400
    _use_posterior(
        vae,
        (mean + 0.3).expand(replicates, DZ),
        (0.5 * torch.diagonal(cov).log()).expand(replicates, DZ),
    )
    truth = _log_evidence(x, weight, bias).item()
    xs = x.expand(replicates, D)
    elbo = vae.importance_weighted(xs, 1)["elbo"].mean().item()
    bounds = {k: -vae.importance_weighted(xs, k)["nll"] for k in (1, 10, 100, 1000)}
    means = {k: b.mean().item() for k, b in bounds.items()}
    errors = {k: b.std().item() / math.sqrt(replicates) for k, b in bounds.items()}
    assert elbo < means[10] - 3 * errors[10]
    for small, large in ((1, 10), (10, 100), (100, 1000)):
        assert means[small] < means[large]
    assert means[1000] <= truth + 3 * errors[1000]
    gaps = [truth - means[k] for k in (1, 10, 100, 1000)]
    assert gaps[0] > 0.05  # the test means something: q is visibly off
    assert gaps[-1] < 0.1 * gaps[0]  # and IWAE_k closes most of the gap


FLOW_POSTERIORS = {
    "planar": lambda: posteriors.planar(DZ, 8, num_flows=2),
    "radial": lambda: posteriors.radial(DZ, 8, num_flows=2),
    "iaf": lambda: posteriors.iaf(DZ, 8, num_flows=2, hidden_features=8),
    "sylvester": lambda: posteriors.sylvester(DZ, 8, num_flows=2, variant="triangular"),
    "householder": lambda: posteriors.householder(DZ, 8, num_flows=2),
}


@pytest.mark.parametrize("name", FLOW_POSTERIORS)
def test_flow_posterior_weights_average_to_the_exact_evidence(name):
    """Importance weights are unbiased for any q: E_q[p(x, z) / q(z|x)] = p(x). With a flow
    posterior, log q(z_K|x) = log q(z_0|x) - log|det dz_K/dz_0|; a wrong log-det (sign,
    missing term) makes the weights average to something else. Checked against the exact
    evidence of a linear-Gaussian model, with the flow's parameters perturbed off the
    identity and a random context."""
    torch.manual_seed(4)
    weight = 0.5 * torch.randn(D, DZ, dtype=torch.float64)
    bias = torch.randn(D, dtype=torch.float64)
    x = torch.randn(3, D, dtype=torch.float64)
    vae = _linear_gaussian(weight, bias, FLOW_POSTERIORS[name]().double())
    with torch.no_grad():
        for p in vae.posterior.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mean, cov = _exact_posterior(x, weight, bias)
    # q(z_0|x) twice as wide as the true posterior, so the weights have light tails
    log_scale = 0.5 * torch.diagonal(cov).log().expand(3, DZ) + math.log(2.0)
    context = torch.randn(3, 8, dtype=torch.float64)
    logdets = []
    vae.posterior.register_forward_hook(lambda module, args, out: logdets.append(out[1]))
    k = 100_000
    with torch.no_grad():
        log_px_z, log_pz, log_q = vae._log_terms(x, mean, log_scale, context, k)
    truth = _log_evidence(x, weight, bias)

    def mean_ratio(log_q):  # mean of w / p(x) per example, and its standard error
        ratio = (log_px_z + log_pz - log_q - truth[:, None]).exp()
        return ratio.mean(1), ratio.std(1) / math.sqrt(k)

    estimate, error = mean_ratio(log_q)
    assert ((estimate - 1).abs() < 4 * error + 0.005).all(), (estimate, error)
    if name != "householder":  # volume-preserving: its log-det is 0, no sign to get wrong
        flipped, flipped_error = mean_ratio(log_q + 2 * logdets[0].view(3, k))
        assert ((flipped - 1).abs() > 4 * flipped_error + 0.02).any()  # the test can tell


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(2)
    mean = torch.randn(3, 4, dtype=torch.float64)
    log_scale = 0.5 * torch.randn(3, 4, dtype=torch.float64)
    closed = gaussian_kl(mean, log_scale).sum(1)
    q = torch.distributions.Normal(mean, log_scale.exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(closed, torch.distributions.kl_divergence(q, p).sum(1))
    z = q.sample((200_000,))
    samples = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    error = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - closed).abs() < 4 * error).all()


def test_vae_kl_metric_is_closed_form_for_gaussian_and_monte_carlo_for_flows():
    torch.manual_seed(3)
    x = torch.randint(0, 17, (6, 1, 8, 8))
    gaussian = VAE((1, 8, 8), 17, 3, hidden_features=16).double()
    mean, log_scale, _ = gaussian.q_params(x)
    result = gaussian.importance_weighted(x, 4)
    torch.testing.assert_close(result["kl"], gaussian_kl(mean, log_scale).sum(1))
    # with many samples the Monte Carlo KL of an identity-like flow agrees with it
    flow = VAE((1, 8, 8), 17, 3, hidden_features=16, posterior=posteriors.householder(3, 16, 2))
    flow = flow.double()
    mean, log_scale, _ = flow.q_params(x)
    mc = flow.importance_weighted(x, 20_000)["kl"]  # reflections keep the KL to N(0, I)
    torch.testing.assert_close(mc, gaussian_kl(mean, log_scale).sum(1), atol=0.05, rtol=0.01)


@pytest.mark.parametrize(
    "name,levels", [("bernoulli", 2), ("categorical", 5), ("logistic_mixture", 7)]
)
def test_discrete_likelihoods_sum_to_one_over_the_levels(name, levels):
    torch.manual_seed(4)
    likelihood = build_likelihood(name, (1, 1, 1), levels, num_mixtures=3)
    params = torch.randn(1, likelihood.num_channels, 1, 1, dtype=torch.float64)
    values = torch.arange(levels).view(levels, 1, 1, 1)
    total = likelihood.log_prob(params.expand(levels, -1, -1, -1), values).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))


def test_dequantized_gaussian_counts_the_bin_width():
    """E_u exp(log_prob) over all levels = the Gaussian mass on [0, 1], and no more."""
    torch.manual_seed(5)
    levels = 4
    likelihood = build_likelihood("gaussian", (1, 1, 1), levels, gaussian_scale="learned")
    raw_mean, log_scale = 0.3, math.log(0.2)
    params = torch.tensor([raw_mean, log_scale], dtype=torch.float64).view(1, 2, 1, 1)
    n = 200_000
    total = 0.0
    for value in range(levels):
        x = torch.full((n, 1, 1, 1), value)
        total += likelihood.log_prob(params.expand(n, -1, -1, -1), x).exp().mean().item()
    normal = torch.distributions.Normal(torch.sigmoid(torch.tensor(raw_mean)), math.exp(log_scale))
    inside = (normal.cdf(torch.tensor(1.0)) - normal.cdf(torch.tensor(0.0))).item()
    assert abs(total - inside) < 0.01


def test_kl_warmup_and_free_bits_shape_the_loss():
    torch.manual_seed(6)
    x = torch.randint(0, 17, (8, 1, 8, 8))
    vae = VAE((1, 8, 8), 17, 4, hidden_features=16, kl_warmup_steps=100)
    bits = 64 * math.log(2)
    for step, beta in ((0, 0.0), (25, 0.25), (100, 1.0), (400, 1.0)):
        vae.set_training_step(step)
        torch.manual_seed(7)
        out = vae(x)
        assert out.metrics["beta"].item() == pytest.approx(beta)
        expected = out.metrics["recon"] + beta * out.metrics["kl"]
        torch.testing.assert_close(out.loss * bits, expected, rtol=1e-5, atol=1e-4)
    floored = VAE((1, 8, 8), 17, 4, hidden_features=16, free_bits=50.0)
    out = floored(x)  # every dimension's KL is far below 50 nats: the floor is what counts
    torch.testing.assert_close(
        out.loss * bits, out.metrics["recon"] + 4 * 50.0, rtol=1e-5, atol=1e-3
    )
    flow = VAE(
        (1, 8, 8), 17, 4, hidden_features=16, free_bits=50.0, posterior=posteriors.planar(4, 16, 2)
    )
    out = flow(x)
    torch.testing.assert_close(
        out.loss * bits, out.metrics["recon"] + 4 * 50.0, rtol=1e-5, atol=1e-3
    )


def test_chunked_importance_sampling_matches_one_chunk():
    torch.manual_seed(8)
    x = torch.randint(0, 2, (3, 1, 4, 4))
    vae = VAE((1, 4, 4), 2, 2, hidden_features=8, posterior=posteriors.planar(2, 8, 2)).double()
    calls = []
    vae.decoder.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    whole = torch.stack([vae.importance_weighted(x, 300)["nll"] for _ in range(20)])
    assert calls == [900] * 20
    vae.iw_chunk_elements = 16 * 3 * 7  # 7 samples per example at a time
    calls.clear()
    chunked = torch.stack([vae.importance_weighted(x, 300)["nll"] for _ in range(20)])
    assert len(calls) == 20 * 43 and max(calls) == 21
    error = (whole.var(0) / 20 + chunked.var(0) / 20).sqrt()
    assert ((whole.mean(0) - chunked.mean(0)).abs() < 4 * error + 1e-3).all()


@pytest.mark.parametrize(
    "posterior", ["gaussian", "planar", "radial", "householder", "iaf", "sylvester"]
)
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_every_posterior_trains_on_binary_and_categorical_images(posterior, network):
    torch.manual_seed(9)
    for levels, shape in ((2, (1, 8, 8)), (17, (1, 8, 8))):
        flow = getattr(posteriors, posterior)(3, 16)
        vae = VAE(
            shape, levels, 3, hidden_features=16, network=network, conv_channels=4, posterior=flow
        )
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
        x = torch.randint(0, levels, (4, *shape))
        out = vae(x)
        out.loss.backward()
        optimizer.step()
        assert torch.isfinite(out.loss)
        metrics = vae.evaluate(x)
        assert (metrics["nll"] > 0).all() and torch.isfinite(metrics["bpd"]).all()
        assert (metrics["elbo"] <= -metrics["nll"] + 1.0).all()  # up to Monte Carlo noise
        assert vae.sample(3).shape == (3, *shape)
        pictures = vae.pictures(x)
        assert set(pictures) == {"reconstructions", "prior_means", "traversal", "posterior_draws"}


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="bernoulli needs binary data"):
        VAE((1, 8, 8), 17, likelihood="bernoulli")
    with pytest.raises(ValueError, match="network=conv"):
        VAE((1, 6, 6), 17, network="conv")
    with pytest.raises(ValueError, match="kl_warmup_steps"):
        VAE((1, 8, 8), 17, kl_warmup_steps=-1)
    with pytest.raises(ValueError, match="likelihood=poisson"):
        VAE((1, 8, 8), 17, likelihood="poisson")


@pytest.mark.parametrize("prior", ["standard", "mog"])
def test_mc_samples_average_independent_draws_in_the_training_elbo(prior):
    """model.mc_samples = L: the training -ELBO is the mean over L posterior draws per
    example, so its expectation is unchanged and its variance falls by L (closed-form KL
    under the standard prior, the Monte Carlo KL under a mixture)."""
    from genflow.models.priors import MixturePrior

    torch.manual_seed(6)
    weight, bias = torch.randn(D, DZ, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    x = torch.randn(1, D, dtype=torch.float64)
    losses = {}
    for samples in (1, 16):
        vae = _linear_gaussian(weight, bias)
        if prior == "mog":
            vae.prior = MixturePrior(DZ, 3).double()
            vae.analytic_kl = False
        vae.mc_samples = samples
        _use_posterior(vae, torch.zeros(1, DZ, dtype=torch.float64), torch.zeros(1, DZ) - 0.5)
        with torch.no_grad():
            losses[samples] = torch.stack([-vae(x).metrics["elbo"] for _ in range(600)])
    error = (losses[1].var() / 600 + losses[16].var() / 600).sqrt()
    assert (losses[1].mean() - losses[16].mean()).abs() < 4 * error
    assert 8 < losses[1].var() / losses[16].var() < 32


def test_two_latent_vae_draws_its_manifold_posterior_draws_and_codes():
    """With latent_features=2: the manifold decodes a 15 x 15 grid spanning the prior's 2% to
    98% quantiles (z[0] along a row, z[1] down the rows); posterior_draws puts the input first,
    then 63 decodings of z ~ q(z|x); latent_points are the posterior means encode gives."""
    from genflow.models.priors import MixturePrior

    torch.manual_seed(0)
    vae = VAE((1, 8, 8), 17, 2, hidden_features=16, prior=MixturePrior(2, 3)).eval()
    x = torch.randint(0, 17, (12, 1, 8, 8))
    pictures = vae.pictures(x)
    manifold, nrow, _ = pictures["manifold"]
    assert manifold.shape == (225, 1, 8, 8) and nrow == 15
    torch.manual_seed(1)
    grid = vae.manifold()
    torch.manual_seed(1)
    low, high = torch.quantile(vae.prior_sample(10_000), torch.tensor([0.02, 0.98]), dim=0)
    corners = torch.stack([low, torch.stack([high[0], low[1]]), high])
    torch.testing.assert_close(grid[[0, 14, 224]], vae.decode(corners))
    draws, nrow, caption = pictures["posterior_draws"]
    assert draws.shape == (64, 1, 8, 8) and nrow == 8 and torch.equal(draws[0], x[0].float())
    assert "63 draws z ~ q(z|x)" in caption
    assert draws[1:].std(0).sum() > 0  # different draws decode differently
    torch.testing.assert_close(vae.latent_points(x), vae.encode(x))
    three = VAE((1, 8, 8), 17, 3, hidden_features=16)
    assert three.latent_points(x) is None and "manifold" not in three.pictures(x)
