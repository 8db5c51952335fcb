"""VAEs through the CLI: every posterior on digits and binarized MNIST, eval's IW-NLL, pictures."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    MNIST_ROOT,
    MODEL_TINY,
    RUN_TINY,
    last_json_line,
    read_records,
    run_dirs,
    run_genflow,
)

POSTERIORS = ["gaussian", "planar", "radial", "householder", "iaf", "sylvester"]
VAE_TINY = ["model=vae", *MODEL_TINY["vae"]]


def _posterior_of(run_dir) -> str:
    config = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]
    return config["model"]["posterior"]["_target_"].rsplit(".", 1)[-1]


def test_every_posterior_trains_on_digits_and_reports_the_bounds(workdir):
    sweep = f"model/posterior={','.join(POSTERIORS)}"
    run_genflow(["train", "-m", *VAE_TINY, sweep, *RUN_TINY], workdir)
    dirs = run_dirs(workdir)
    assert sorted(_posterior_of(d) for d in dirs) == sorted(POSTERIORS)
    for run_dir in dirs:
        summary = json.loads((run_dir / "eval.json").read_text())
        assert summary["iw_samples"] == 8
        # a categorical decoder's -log p(x|z) is positive; the IW bound lies above the ELBO
        assert summary["recon"] > 0 and summary["num_examples"] == 447
        assert summary["elbo"] <= -summary["nll"] + 1.0  # (up to Monte Carlo noise)
        for picture in ("step", "reconstructions", "prior_means", "traversal"):
            assert (run_dir / "samples" / f"{picture}_0000020.png").stat().st_size > 100
        val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert {"elbo", "recon", "kl", "nll", "bpd"} <= set(
            next(r for r in val if r["split"] == "val")
        )
        assert {"elbo", "recon", "kl", "beta"} <= set(next(r for r in val if r["split"] == "train"))


def test_a_multi_sample_objective_trains_and_logs_its_bound(workdir):
    """model.objective=piwae with DReG through the CLI: the training records carry the
    bound it trains (at beta = 1), above the ELBO of the same draws; eval is unchanged."""
    args = ["model.objective=piwae", "model.k=3", "model.mc_samples=2", "model.gradient=dreg"]
    run_genflow(["train", *VAE_TINY, *args, "model.beta=0.5", *RUN_TINY], workdir)
    [run_dir] = run_dirs(workdir)
    train = [r for r in read_records(run_dir) if r["split"] == "train"]
    assert train and all(r["elbo"] <= r["bound"] <= 0 and r["beta"] == 0.5 for r in train)
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["iw_samples"] == 8 and summary["elbo"] <= -summary["nll"] + 1.0
    config = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert config["model"]["objective"] == "piwae" and config["model"]["gradient"] == "dreg"


PRIORS = ["mog", "vampprior", "flow"]


def test_every_learnable_prior_trains_on_digits_with_latent_pictures(workdir):
    # two latents: the manifold and the scatter of validation codes by class are drawn too
    run_genflow(
        [
            "train",
            "-m",
            *VAE_TINY,
            "model.latent_features=2",
            f"model/prior={','.join(PRIORS)}",
            *RUN_TINY,
        ],
        workdir,
    )
    dirs = run_dirs(workdir)
    priors = {}
    for run_dir in dirs:
        config = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]
        priors[config["model"]["prior"]["_target_"].rsplit(".", 1)[-1]] = run_dir
    assert sorted(priors) == ["FlowPrior", "MixturePrior", "VampPrior"]
    for run_dir in dirs:
        summary = json.loads((run_dir / "eval.json").read_text())
        assert summary["recon"] > 0 and summary["nll"] > 0
        assert summary["elbo"] <= -summary["nll"] + 1.0  # (up to Monte Carlo noise)
        for picture in ("prior_means", "posterior_draws", "manifold", "latent_scatter"):
            assert (run_dir / "samples" / f"{picture}_0000020.png").stat().st_size > 100
    # the VampPrior samples through the encoder at its pseudo-inputs, from a reloaded run too
    grid = last_json_line(
        run_genflow(["sample", f"run={priors['VampPrior']}", "sample.n=5"], workdir).stdout
    )
    assert torch.load(grid["tensor"], weights_only=True).shape == (5, 1, 8, 8)


def test_eval_reports_iw_nll_with_eval_iw_samples_and_sample_draws(workdir):
    run_genflow(
        ["train", *VAE_TINY, "model/posterior=sylvester", "model.kl_warmup_steps=10", *RUN_TINY],
        workdir,
    )
    [run_dir] = run_dirs(workdir)
    proc = run_genflow(["eval", f"run={run_dir}", "eval.iw_samples=300"], workdir)
    summary = last_json_line(proc.stdout)
    assert summary["iw_samples"] == 300 and summary["num_examples"] == 447
    assert summary["nll"] > 0 and summary["elbo"] < -summary["nll"]
    assert json.loads((run_dir / "eval.json").read_text()) == summary
    grid = last_json_line(run_genflow(["sample", f"run={run_dir}", "sample.n=6"], workdir).stdout)
    samples = torch.load(grid["tensor"], weights_only=True)
    assert samples.shape == (6, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 16
    path = last_json_line(
        run_genflow(
            [
                "sample",
                f"run={run_dir}",
                "sample.mode=interpolate",
                "sample.pairs=2",
                "sample.steps=4",
            ],
            workdir,
        ).stdout
    )
    assert torch.load(path["tensor"], weights_only=True).shape == (2, 4, 1, 8, 8)


@pytest.mark.skipif(not (MNIST_ROOT / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_posteriors_run_on_binarized_mnist(workdir):
    # every posterior runs on digits above; on MNIST the diagonal Gaussian and one flow
    run_genflow(
        [
            "train",
            "-m",
            *VAE_TINY,
            "model/posterior=gaussian,sylvester",
            "dataset=binarized_mnist",
            "dataset.binarize=dynamic",
            *RUN_TINY,
            "trainer.max_steps=4",
            "trainer.eval_every=4",
            "trainer.sample_every=0",
            "eval.iw_samples=2",
        ],
        workdir,
    )
    dirs = run_dirs(workdir)
    assert sorted(_posterior_of(d) for d in dirs) == ["gaussian", "sylvester"]
    for run_dir in dirs:
        summary = json.loads((run_dir / "eval.json").read_text())
        # near a coin flip per pixel after 4 steps: about 1 bit per dimension
        assert summary["num_examples"] == 10_000 and 0.5 < summary["bpd"] < 1.5
    # the training split is scored as binary draws too, not as the stored 0..255 intensities
    # (which gave a negative bpd before)
    proc = run_genflow(["eval", f"run={dirs[0]}", "split=train", "eval.iw_samples=1"], workdir)
    on_train = last_json_line(proc.stdout)
    assert on_train["num_examples"] == 50_000 and 0.5 < on_train["bpd"] < 1.5
