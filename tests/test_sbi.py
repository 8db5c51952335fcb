"""Simulation-based-inference tasks: their reference posteriors are exact (against a grid
posterior and by simulation-based calibration), the classifier two-sample test tells equal
samples from different ones, and a posterior estimator trains, is scored by C2ST and draws
its posteriors from the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import RUN_TINY, last_json_line, run_dirs, run_genflow

from genflow.data.sbi import GaussianLinear, TwoMoons
from genflow.engine.c2st import c2st


def _crescent_density(u: np.ndarray) -> np.ndarray:
    """The density of the two-moons crescent p = (r cos a + 0.25, r sin a), a ~ U(-pi/2,
    pi/2), r ~ N(0.1, 0.01^2), in the plane: polar coordinates about (0.25, 0), 1 / r the
    Jacobian; written independently of the rejection sampler under test."""
    d0, d1 = u[..., 0] - 0.25, u[..., 1]
    r = np.hypot(d0, d1)
    normal = np.exp(-0.5 * ((r - 0.1) / 0.01) ** 2) / (0.01 * math.sqrt(2 * math.pi))
    return np.where(d0 > 0, normal / (math.pi * np.maximum(r, 1e-12)), 0.0)


def test_the_two_moons_reference_posterior_matches_the_grid_posterior():
    """Prior x likelihood on a fine grid, binned, against a histogram of the rejection
    sampler's draws: total variation within sampling noise, at several observations."""
    task = TwoMoons()
    side = np.linspace(-1, 1, 1201)
    t0, t1 = np.meshgrid(side, side, indexing="ij")
    shift = np.stack((-np.abs(t0 + t1) / math.sqrt(2), (t1 - t0) / math.sqrt(2)), axis=-1)
    edges = np.linspace(-1, 1, 41)
    for k in range(3):
        rng = np.random.default_rng([7, k])
        x_o = task.simulate(task.prior(1, rng), rng)[0]
        density = _crescent_density(x_o - shift)
        # bin the grid mass (cell centres) into the same 40 x 40 bins as the draws
        grid, _, _ = np.histogram2d(t0.ravel(), t1.ravel(), bins=edges, weights=density.ravel())
        grid /= grid.sum()
        draws = task.posterior(x_o, 20000, rng)
        assert draws.shape == (20000, 2) and (np.abs(draws) <= 1).all()
        drawn, _, _ = np.histogram2d(draws[:, 0], draws[:, 1], bins=edges)
        drawn /= drawn.sum()
        assert 0.5 * np.abs(grid - drawn).sum() < 0.06, k


def test_the_gaussian_linear_reference_posterior_has_bayes_moments():
    """Prior draws weighted by the likelihood N(x_o; theta, 0.1 I) (Bayes' rule by
    importance sampling, per coordinate: they are independent) give the posterior's mean and
    variance; the reference sampler's draws have the same, at every coordinate."""
    task = GaussianLinear()
    rng = np.random.default_rng(5)
    x_o = task.simulate(task.prior(1, rng), rng)[0]
    prior = task.prior(400000, rng)
    weights = np.exp(-0.5 * (x_o - prior) ** 2 / task.noise_var)
    weights /= weights.sum(0)
    mean = (weights * prior).sum(0)
    var = (weights * (prior - mean) ** 2).sum(0)
    draws = task.posterior(x_o, 40000, rng)
    assert np.abs(draws.mean(0) - mean).max() < 0.006
    assert np.abs(draws.var(0) / var - 1).max() < 0.05


@pytest.mark.parametrize("task", [GaussianLinear(), TwoMoons()], ids=type)
def test_simulation_based_calibration_of_the_reference_posteriors(task):
    """theta ~ prior, x ~ simulator, then L posterior draws given x: the rank of theta among
    them is uniform on 0..L in every coordinate exactly when the posterior is the true one."""
    rng = np.random.default_rng(3)
    trials, draws = 400, 19
    ranks = np.zeros((trials, task.theta_dim), dtype=int)
    for i in range(trials):
        theta = task.prior(1, rng)
        x = task.simulate(theta, rng)[0]
        posterior = task.posterior(x, draws, rng)
        ranks[i] = (posterior < theta).sum(0)
    counts = np.stack([np.bincount(r, minlength=draws + 1) for r in ranks.T])
    # 20 equally likely ranks, 400 trials: chi-square on 19 d.o.f. per coordinate; the
    # 99.99% point is 47.5, and the coordinates' mean statistic is well inside it
    expected = trials / (draws + 1)
    chi2 = ((counts - expected) ** 2 / expected).sum(1)
    assert chi2.max() < 47.5, chi2


def test_c2st_is_a_half_for_equal_samples_and_one_for_disjoint_ones():
    torch.manual_seed(0)
    a, b = torch.randn(600, 2), torch.randn(600, 2)
    assert abs(c2st(a, b) - 0.5) < 0.06
    assert c2st(a, b + torch.tensor([6.0, 0.0])) > 0.98
    # a narrower second sample, same mean: the classifier sees the difference
    assert c2st(a, 0.3 * b) > 0.7


def test_a_posterior_estimator_trains_and_is_scored_by_c2st_from_the_command_line(workdir):
    """model=nsf on the two-moons task: the test record carries the C2ST at each reference
    observation (as does genflow eval), the posterior picture is written, and genflow sample
    draws for the test split's observations."""
    task = [
        "dataset=sbi_two_moons",
        "dataset.n_train=600",
        "dataset.n_val=100",
        "dataset.n_test=100",
        "dataset.num_observations=2",
        "dataset.reference_samples=200",
    ]
    tiny = ["model.hidden_features=8", "model.num_layers=2", *RUN_TINY]
    proc = run_genflow(["train", "model=nsf", *task, *tiny], workdir)
    assert "given the context (log p(x | c)), c2st" in proc.stderr + proc.stdout
    (run,) = run_dirs(workdir)
    summary = json.loads((run / "eval.json").read_text())
    assert summary["conditional_on"] == "context" and len(summary["c2st_per_observation"]) == 2
    assert 0.4 <= summary["c2st"] <= 1.0 and math.isfinite(summary["nll"])
    assert (run / "samples" / "posterior.png").stat().st_size > 0
    again = last_json_line(run_genflow(["eval", f"run={run}", "split=val"], workdir).stdout)
    assert again["c2st"] == pytest.approx(summary["c2st"])  # seeded: the same draws
    assert (run / "samples" / "posterior_val.png").exists()
    sample = last_json_line(
        run_genflow(["sample", f"run={run}", "sample.context=test", "sample.n=30"], workdir).stdout
    )
    drawn, context = torch.load(sample["tensor"]), torch.load(sample["context"])
    assert drawn.shape == (30, 2) and context.shape == (30, 2) and torch.isfinite(drawn).all()
