"""The hierarchical VAE's truths: per-group KLs that sum to the whole KL, importance weights
whose estimates of p(x) sum to one over a small discrete space, its bounds in order, its
stabilisers, and the CLI end to end."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from conftest import MODEL_TINY, RUN_TINY, perturbed, read_records, run_dirs, run_genflow

from genflow.models.hvae import HVAE, gaussian_kl_between


def _tiny(groups: int = 3, levels: int = 2, shape=(1, 2, 2), std: float = 0.1, **kwargs) -> HVAE:
    torch.manual_seed(0)
    model = HVAE(shape, levels, num_groups=groups, latent_features=2, hidden_features=12, **kwargs)
    return perturbed(model.double(), std)  # off the zero-initialised q = p start


def test_closed_form_kl_matches_its_monte_carlo_group_by_group():
    """Each group's closed-form KL, conditional on the groups drawn above it, has the
    expectation of log q(z_l|.) - log p(z_l|.); their sum is the whole KL's."""
    model = _tiny(groups=3, levels=5, shape=(1, 3, 3), std=0.3)
    x = torch.randint(0, 5, (1, 1, 3, 3)).expand(20_000, -1, -1, -1)
    with torch.no_grad():
        passes = model.top_down(model.bottom_up(x), len(x))
    closed = torch.stack(passes["kl"], dim=1)
    sampled = torch.stack(passes["log_q"], dim=1) - torch.stack(passes["log_p"], dim=1)
    for column in range(3):
        difference = sampled[:, column] - closed[:, column]
        error = difference.std() / math.sqrt(len(x))
        assert abs(difference.mean()) < 4 * error, column
        assert closed[:, column].mean() > 0.05  # each group is away from its prior
    whole = sampled.sum(1)
    assert abs((whole - closed.sum(1)).mean()) < 4 * whole.std() / math.sqrt(len(x))


def test_gaussian_kl_between_matches_torch():
    torch.manual_seed(1)
    q_mean, p_mean, q_log_scale, p_log_scale = torch.randn(4, 5, 3, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(q_mean, q_log_scale.exp()),
        torch.distributions.Normal(p_mean, p_log_scale.exp()),
    )
    torch.testing.assert_close(
        gaussian_kl_between(q_mean, q_log_scale, p_mean, p_log_scale), expected
    )


def test_importance_weighted_estimates_of_p_x_sum_to_one_over_all_images():
    """Over the 16 binary 2x2 images, the importance-weighted estimates of p(x) (weights
    p(x|z) p(z) / q(z|x), z from the posterior) add up to 1: log q or log p wrong in any
    group would move the sum."""
    model = _tiny()
    images = torch.tensor(list(itertools.product([0, 1], repeat=4))).view(16, 1, 2, 2)
    k = 40_000
    with torch.no_grad():
        log_px_z, log_p, log_q = model.log_weights(images, k)
    weights = (log_px_z + log_p - log_q).exp()
    estimate = weights.mean(1).sum()
    error = (weights.var(1) / k).sum().sqrt()
    assert abs(estimate - 1) < 4 * error + 1e-3, (estimate, error)
    assert (log_p - log_q).abs().mean() > 0.1  # q is not the prior: the test means something


def test_bounds_in_order_and_tighter_with_more_samples():
    model = _tiny(groups=2, levels=5, shape=(1, 3, 3))
    x = torch.randint(0, 5, (1, 1, 3, 3)).expand(500, -1, -1, -1)
    with torch.no_grad():
        one, many = model.importance_weighted(x, 1), model.importance_weighted(x, 64)
    elbo, iw1, iw64 = -one["nll"].mean(), -one["nll"].mean(), -many["nll"].mean()
    assert abs(elbo - one["elbo"].mean()) < 1e-9  # one sample: the IW bound is the ELBO's draw
    assert iw1 < iw64 - 4 * many["nll"].std() / math.sqrt(len(x))


def test_free_bits_floor_each_group_and_warm_up_scales_the_kl():
    model = _tiny(groups=2, levels=5, shape=(1, 3, 3), free_bits=0.5, kl_warmup_steps=10)
    model.set_training_step(4)
    x = torch.randint(0, 5, (8, 1, 3, 3))
    torch.manual_seed(3)
    out = model(x)
    torch.manual_seed(3)
    passes = model.top_down(model.bottom_up(x), len(x))
    recon = -model.likelihood.log_prob(passes["params"], x).mean()
    floored = sum(kl.mean().clamp(min=0.5 * 2) for kl in passes["kl"])
    torch.testing.assert_close(out.loss, model.bpd(recon + 0.4 * floored))
    assert out.metrics["beta"].item() == pytest.approx(0.4)


def test_sampling_encoding_and_decoding_keep_their_shapes():
    model = _tiny(groups=3, levels=5, shape=(1, 3, 3))
    x = torch.randint(0, 5, (4, 1, 3, 3))
    samples = model.sample(6, temperature=0.7)
    assert samples.shape == (6, 1, 3, 3) and samples.min() >= 0 and samples.max() < 5
    z = model.encode(x)
    assert z.shape == (4, 6)
    assert model.decode(z).shape == (4, 1, 3, 3)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"num_groups": 0}, "model.num_groups"),
        ({"latent_features": 0}, "model.latent_features"),
        ({"free_bits": -1.0}, "model.free_bits"),
    ],
)
def test_bad_settings_are_one_sentence(settings, words):
    with pytest.raises(ValueError, match=words):
        HVAE((1, 2, 2), 2, **settings)


def test_hvae_trains_evaluates_samples_and_interpolates_through_the_cli(workdir):
    tiny = ["model=hvae", *MODEL_TINY["hvae"], "model.num_groups=3"]
    run_genflow(["train", *tiny, "model.free_bits=0.1", *RUN_TINY], workdir)
    [run_dir] = run_dirs(workdir)
    train = [r for r in read_records(run_dir) if r["split"] == "train"]
    assert {"kl_group1", "kl_group2", "kl_group3", "elbo"} <= set(train[-1])
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["iw_samples"] == 8 and summary["elbo"] <= -summary["nll"] + 1.0
    run_genflow(["eval", f"run={run_dir}", "eval.iw_samples=16"], workdir)
    assert json.loads((run_dir / "eval.json").read_text())["iw_samples"] == 16
    run_genflow(["sample", f"run={run_dir}", "sample.n=8"], workdir)
    run_genflow(["sample", f"run={run_dir}", "sample.mode=interpolate", "sample.pairs=2"], workdir)
    assert len(list((run_dir / "samples").glob("interpolate_*.png"))) == 1
