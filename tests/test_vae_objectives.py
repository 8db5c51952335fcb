"""The VAE's multi-sample objectives (IWAE, MIWAE, PIWAE, CIWAE), beta, and the DReG
estimator, against the linear-Gaussian model whose evidence is known (test_vae.py)."""

from __future__ import annotations

import math

import pytest
import torch
from test_vae import DZ, D, _exact_posterior, _linear_gaussian, _log_evidence, _use_posterior

from genflow.models.vae import VAE, check_objective, training_bound

SETTINGS = [  # (objective, k, mc_samples)
    ("elbo", 1, 1),
    ("elbo", 1, 3),
    ("iwae", 7, 1),
    ("miwae", 5, 3),
    ("piwae", 5, 3),
    ("ciwae", 6, 2),
]


def _model(weight, bias, objective="elbo", k=1, mc_samples=1, **kwargs) -> VAE:
    vae = _linear_gaussian(weight, bias)
    vae.objective, vae.k, vae.mc_samples = objective, k, mc_samples
    for key, value in kwargs.items():
        setattr(vae, key, value)
    return vae


def _problem(seed: int, n: int = 5):
    torch.manual_seed(seed)
    weight = torch.randn(D, DZ, dtype=torch.float64)
    bias = torch.randn(D, dtype=torch.float64)
    return weight, bias, torch.randn(n, D, dtype=torch.float64)


@pytest.mark.parametrize("objective, k, mc_samples", SETTINGS)
def test_with_the_exact_posterior_every_objective_is_the_log_evidence(objective, k, mc_samples):
    torch.manual_seed(0)
    # orthogonal columns: the true posterior is diagonal, so q can be exact
    weight = torch.linalg.qr(torch.randn(D, DZ, dtype=torch.float64)).Q * torch.tensor([1.5, 0.7])
    bias = torch.randn(D, dtype=torch.float64)
    x = torch.randn(5, D, dtype=torch.float64)
    vae = _model(weight, bias, objective, k, mc_samples)
    mean, cov = _exact_posterior(x, weight, bias)
    _use_posterior(vae, mean, 0.5 * torch.diagonal(cov).log().expand(5, DZ))
    truth = _log_evidence(x, weight, bias).mean()
    out = vae(x)
    bound = out.metrics.get("bound", out.metrics["elbo"])
    if objective == "elbo":  # its KL is in closed form: exact on average over the draws only
        torch.testing.assert_close(bound, truth, atol=0.5, rtol=0)
    else:  # every log weight is log p(x): no slack for any k
        torch.testing.assert_close(bound, truth, atol=1e-10, rtol=0)
        torch.testing.assert_close(out.loss, vae.bpd(-truth), atol=1e-12, rtol=0)


def _reference_bound(log_w: torch.Tensor, objective: str, k: int, m: int, beta: float = 0.5):
    """Each bound written out from its paper, one example's weights at a time: group g holds
    samples g*k ... g*k + k - 1."""
    values = []
    for row in log_w:
        groups = [row[g * k : (g + 1) * k] for g in range(m)]

        def iwae(w):
            return torch.logsumexp(w, 0) - math.log(len(w))

        if objective == "elbo":
            values.append(row.mean())
        elif objective in ("iwae", "miwae"):
            values.append(sum(iwae(w) for w in groups) / m)
        elif objective == "piwae":
            values.append(iwae(row))
        else:
            values.append(sum(beta * w.mean() + (1 - beta) * iwae(w) for w in groups) / m)
    return torch.stack(values)


@pytest.mark.parametrize("objective, k, mc_samples", SETTINGS)
def test_the_training_loss_is_the_bound_of_its_papers(objective, k, mc_samples):
    """forward's loss, on the same posterior draws, is the paper's bound of those weights
    (at beta = 1 and with a posterior that is off, so the bounds differ)."""
    weight, bias, x = _problem(1)
    vae = _model(weight, bias, objective, k, mc_samples, ciwae_beta=0.3)
    if objective == "elbo":  # the closed-form KL path: compared on its terms below
        vae.prior.standard = False
        vae.analytic_kl = False
    torch.manual_seed(7)
    out = vae(x)
    torch.manual_seed(7)
    mean, log_scale, context = vae.q_params(x)
    with torch.no_grad():
        log_px_z, log_pz, log_q = vae._log_terms(x, mean, log_scale, context, k * mc_samples)
    expected = _reference_bound(log_px_z + log_pz - log_q, objective, k, mc_samples, beta=0.3)
    torch.testing.assert_close(out.loss, vae.bpd(-expected.mean()), atol=1e-12, rtol=0)
    assert math.isfinite(out.loss.item())


def test_bounds_order_as_the_theory_says():
    """E ELBO < E CIWAE < E IWAE_k <= log p(x); IWAE rises with k; MIWAE(M, K) has IWAE_K's
    expectation; PIWAE's generative target, IWAE over all M*K samples, is above both."""
    weight, bias, x = _problem(2, n=1)
    vae = _linear_gaussian(weight, bias)
    mean, cov = _exact_posterior(x, weight, bias)
    replicates = 2000
    mean, log_scale = (
        (mean + 0.3).expand(replicates, DZ),
        (0.5 * cov.diagonal().log()).expand(replicates, DZ),
    )
    xs = x.expand(replicates, D)
    truth = _log_evidence(x, weight, bias).item()

    def bound(objective, k, m):
        with torch.no_grad():
            terms = vae._log_terms(xs, mean, log_scale, mean[:, :0], k * m)
        log_w = (terms[0] + terms[1] - terms[2]).view(replicates, m, k)
        values = training_bound(log_w, objective)
        return values.mean().item(), values.std().item() / math.sqrt(replicates)

    torch.manual_seed(3)
    elbo, ciwae, iwae10 = bound("elbo", 1, 10), bound("ciwae", 10, 1), bound("iwae", 10, 1)
    miwae, piwae = bound("miwae", 10, 4), bound("piwae", 10, 4)
    iwae1, iwae100 = bound("iwae", 1, 1), bound("iwae", 100, 1)
    se = max(e for _, e in (elbo, ciwae, iwae10, miwae, piwae, iwae1, iwae100))
    assert elbo[0] < ciwae[0] - 3 * se and ciwae[0] < iwae10[0] - 3 * se
    assert iwae1[0] < iwae10[0] < iwae100[0] <= truth + 3 * se
    assert abs(miwae[0] - iwae10[0]) < 4 * math.hypot(miwae[1], iwae10[1])
    assert piwae[0] > miwae[0] + 3 * se and piwae[0] <= truth + 3 * se
    assert truth - elbo[0] > 0.2  # the test means something: q is visibly off


def test_beta_weights_the_kl_in_every_objective():
    weight, bias, x = _problem(4)
    vae = _model(weight, bias, beta=2.0)
    out = vae(x)  # the ELBO with the closed-form KL: recon + 2 KL
    expected = out.metrics["recon"] + 2.0 * out.metrics["kl"]
    torch.testing.assert_close(out.loss, vae.bpd(expected), atol=1e-12, rtol=0)
    assert out.metrics["beta"].item() == 2.0
    vae = _model(weight, bias, "iwae", k=4, beta=0.0)  # beta 0: the weights are p(x|z) alone
    torch.manual_seed(5)
    out = vae(x)
    torch.manual_seed(5)
    mean, log_scale, context = vae.q_params(x)
    with torch.no_grad():
        log_px_z, _, _ = vae._log_terms(x, mean, log_scale, context, 4)
    expected = torch.logsumexp(log_px_z, 1) - math.log(4)
    torch.testing.assert_close(out.loss, vae.bpd(-expected.mean()), atol=1e-12, rtol=0)


def _gradients(vae: VAE, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(generative, inference) gradients of one training step, each flattened."""
    vae.zero_grad()
    torch.manual_seed(seed)
    vae(x).loss.backward()
    inference = {id(p) for p in vae.inference_parameters()}
    flat = {
        side: torch.cat(
            [
                p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()).double()
                for p in vae.parameters()
                if (id(p) in inference) == side
            ]
        )
        for side in (False, True)
    }
    return flat[False], flat[True]


def _trainable(weight, bias, objective, k, mc_samples, gradient="reparam"):
    """The linear-Gaussian VAE with its real encoder and a learnable decoder."""
    return _model(weight, bias, objective, k, mc_samples, gradient=gradient)


def test_piwae_trains_the_decoder_on_iwae_and_the_encoder_on_miwae():
    """Rainforth et al. 2018: PIWAE's generative network follows IWAE over all M * K
    samples, its inference network MIWAE(M, K): each side's gradient is exactly the one of
    its own objective, on the same posterior draws."""
    weight, bias, x = _problem(6)
    state = _trainable(weight, bias, "piwae", 5, 3).state_dict()

    def grads(objective, k, m):
        vae = _trainable(weight, bias, objective, k, m)
        vae.load_state_dict(state)
        return _gradients(vae, x, seed=11)

    piwae_gen, piwae_inf = grads("piwae", 5, 3)
    iwae_gen, iwae_inf = grads("iwae", 15, 1)
    miwae_gen, miwae_inf = grads("miwae", 5, 3)
    torch.testing.assert_close(piwae_gen, iwae_gen, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(piwae_inf, miwae_inf, atol=1e-12, rtol=1e-9)
    # and the two targets do differ, or the test would hold for any mix of them
    assert (iwae_inf - miwae_inf).abs().max() > 1e-4
    assert (iwae_gen - miwae_gen).abs().max() > 1e-4


def test_dreg_gives_the_iwae_gradient_in_expectation_with_less_variance():
    """Tucker et al. 2019: the doubly-reparameterised estimator of the encoder's gradient
    has the IWAE gradient's expectation; the decoder's gradient is IWAE's own."""
    weight, bias, _ = _problem(8, n=1)
    x = torch.randn(1, D, dtype=torch.float64)
    k, batch, rounds = 10, 200, 40
    state = _trainable(weight, bias, "iwae", k, 1).state_dict()
    sides = {}
    for gradient in ("reparam", "dreg"):
        vae = _trainable(weight, bias, "iwae", k, 1, gradient=gradient)
        vae.load_state_dict(state)
        sides[gradient] = [_gradients(vae, x.expand(batch, D), seed) for seed in range(rounds)]
    # the same draws give the decoder the same gradient
    torch.testing.assert_close(sides["dreg"][0][0], sides["reparam"][0][0], atol=1e-12, rtol=1e-9)
    inference = {g: torch.stack([grad[1] for grad in sides[g]]) for g in sides}
    means = {g: v.mean(0) for g, v in inference.items()}
    errors = {g: v.std(0) / math.sqrt(rounds) for g, v in inference.items()}
    used = errors["reparam"] > 0  # encoder weights that reach the latent at all
    gap = (means["dreg"] - means["reparam"]).abs()[used]
    assert (gap < 5 * torch.hypot(errors["dreg"], errors["reparam"])[used]).all()
    assert errors["dreg"][used].mean() < errors["reparam"][used].mean()


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"objective": "vi"}, "model.objective must be one of"),
        ({"objective": "elbo", "k": 4}, "the ELBO does not"),
        ({"objective": "iwae", "k": 4, "mc_samples": 2}, "use model.objective=miwae"),
        ({"objective": "iwae", "k": 0}, "model.k"),
        ({"beta": -1.0}, "model.beta"),
        ({"objective": "ciwae", "ciwae_beta": 1.5}, "model.ciwae_beta"),
        ({"gradient": "dreg"}, "use it with model.objective=iwae"),
        ({"gradient": "score"}, "model.gradient must be one of"),
        ({"objective": "iwae", "k": 4, "free_bits": 0.5}, "model.free_bits"),
    ],
)
def test_objective_settings_that_cannot_train_are_one_sentence(settings, words):
    args = {
        "objective": "elbo",
        "k": 1,
        "mc_samples": 1,
        "beta": 1.0,
        "ciwae_beta": 0.5,
        "gradient": "reparam",
        "free_bits": 0.0,
    }
    with pytest.raises(ValueError, match=words):
        check_objective(**{**args, **settings})


def test_dreg_needs_the_gaussian_posterior():
    from genflow.models import posteriors

    with pytest.raises(ValueError, match="model/posterior=gaussian"):
        VAE(
            (D,),
            None,
            DZ,
            hidden_features=8,
            objective="iwae",
            k=4,
            gradient="dreg",
            posterior=posteriors.planar(DZ, 8, num_flows=2),
        )


def _posterior(name: str):
    from genflow.models import posteriors

    builders = {
        "gaussian": lambda: posteriors.gaussian(3, 16),
        "planar": lambda: posteriors.planar(3, 16, num_flows=2),
        "radial": lambda: posteriors.radial(3, 16, num_flows=2),
        "householder": lambda: posteriors.householder(3, 16, num_flows=2),
        "iaf": lambda: posteriors.iaf(3, 16, num_flows=2, hidden_features=8),
        "nsf": lambda: posteriors.nsf(3, 16, num_flows=2, hidden_features=8),
        "sylvester": lambda: posteriors.sylvester(3, 16, num_flows=2, variant="orthogonal"),
    }
    return builders[name]()


def _prior(name: str):
    from genflow.models import priors

    builders = {
        "standard": lambda: priors.StandardPrior(3),
        "mog": lambda: priors.MixturePrior(3, num_components=4),
        "vampprior": lambda: priors.VampPrior(3, (1, 8, 8), num_components=4),
        "flow": lambda: priors.FlowPrior(3, num_layers=2, hidden_features=8),
        "flow_aggregate": lambda: priors.FlowPrior(
            3, num_layers=2, hidden_features=8, fit="aggregate"
        ),
    }
    return builders[name]()


@pytest.mark.parametrize(
    "posterior, prior, objective, gradient",
    [
        *[(p, "standard", "piwae", "reparam") for p in ("planar", "radial", "householder")],
        *[(p, "standard", "ciwae", "reparam") for p in ("iaf", "nsf", "sylvester")],
        *[("gaussian", p, "piwae", "dreg") for p in ("mog", "vampprior", "flow_aggregate")],
        ("sylvester", "flow", "miwae", "reparam"),
    ],
)
def test_every_posterior_and_prior_trains_under_the_objectives(
    posterior, prior, objective, gradient
):
    """Each objective works with every posterior and prior: a finite loss and a finite
    gradient for every parameter that takes part (on digits-sized images, 17 levels)."""
    torch.manual_seed(9)
    vae = VAE(
        (1, 8, 8),
        17,
        3,
        hidden_features=16,
        posterior=_posterior(posterior),
        prior=_prior(prior),
        objective=objective,
        k=3,
        mc_samples=1 if objective == "iwae" else 2,
        gradient=gradient,
    )
    x = torch.randint(0, 17, (6, 1, 8, 8))
    vae.initialize(x)
    out = vae(x)
    out.loss.backward()
    # discrete data: every bound is a log-probability's lower bound, so <= 0, and >= the ELBO
    assert torch.isfinite(out.loss) and out.metrics["elbo"] <= out.metrics["bound"] <= 0
    grads = [p.grad for p in vae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
