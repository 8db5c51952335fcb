"""Flows fitted to 2-D target energies by reverse KL: the targets, log Z, and the bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import RUN_TINY, compose_config, perturbed, run_dirs, run_genflow

from genflow.distributions.energies import ENERGIES, grid, log_partition, sample_from_grid
from genflow.errors import GenflowError
from genflow.models.energy_flow import ENERGY_FLOWS, EnergyFlow
from genflow.tasks import eval as eval_task
from genflow.tasks import sample as sample_task


def test_log_partition_of_a_gaussian_energy_is_exact():
    """The grid integral against a closed form: U = z1^2 / (2 * 0.7^2) + z2^2 / (2 * 1.0^2)
    has Z = 2 pi 0.7 (the box [-6, 6]^2 holds all but 2e-9 of it)."""
    scales = torch.tensor([0.7, 1.0], dtype=torch.float64)
    log_z = log_partition(lambda z: 0.5 * (z / scales).pow(2).sum(1), size=600)
    assert log_z == pytest.approx(math.log(2 * math.pi * 0.7), abs=1e-8)


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_targets_are_integrable_and_their_grid_draws_follow_them(name):
    """log Z does not move when the grid is refined or widened (U2-U4's wall confines z1),
    and draws from the grid have the density's mean and quadrant masses."""
    energy = ENERGIES[name]
    coarse = log_partition(energy, size=600)
    assert coarse == pytest.approx(log_partition(energy, limit=8.0, size=1000), abs=1e-4)
    points, area = grid(size=600)
    density = torch.exp(-energy(points) - coarse) * area
    draws = torch.from_numpy(sample_from_grid(energy, 100_000, np.random.default_rng(0), size=600))
    mean = (density[:, None] * points).sum(0)
    assert torch.allclose(draws.mean(0), mean, atol=0.03)
    for sx in (-1, 1):
        for sy in (-1, 1):
            inside = (sx * points[:, 0] > 0) & (sy * points[:, 1] > 0)
            drawn = ((sx * draws[:, 0] > 0) & (sy * draws[:, 1] > 0)).double().mean()
            assert abs(drawn - density[inside].sum()) < 0.01


@pytest.mark.parametrize("flow", ENERGY_FLOWS)
def test_importance_weights_of_every_flow_average_to_z(flow):
    """E_q[exp(-U(z) - log q(z))] = Z for any q: -U - log q of each draw is a log weight,
    so the weights' mean is Z, and their log's mean is below log Z. A log-det with the wrong
    sign (or a missing one) makes the weights average to something else. Flows perturbed
    off their start, on U1."""
    torch.manual_seed(0)
    model = EnergyFlow((2,), None, "u1", flow, num_flows=4, hidden_features=16).double()
    perturbed(model, 0.3)
    with torch.no_grad():
        # a wide base (temperature 3: N(0, 9 I), its log-density counted) covers the ring of
        # U1, so the weights have light tails
        z, log_q = model.draw(100_000, temperature=3.0)
        log_w = -model.energy(z) - log_q
        bound = model.evaluate(torch.zeros(20_000, 2))["log_z_bound"].mean()
    w = torch.exp(log_w - model.log_z)
    assert abs(w.mean().item() - 1) < 4 * w.std().item() / math.sqrt(len(w)) + 0.01, w.mean()
    assert log_w.mean() < model.log_z and bound < model.log_z  # bounds at any temperature
    if model.invertible:  # log q from the inverse agrees with what the draws carried
        torch.manual_seed(1)
        z, log_q = model.draw(64)
        torch.testing.assert_close(model.log_prob(z), log_q)


def test_reverse_kl_training_closes_the_gap_to_log_z():
    torch.manual_seed(0)
    model = EnergyFlow((2,), None, "u2", "realnvp", num_flows=4, hidden_features=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = model.evaluate(torch.zeros(4000, 2))["kl"].mean()
    for _ in range(300):
        loss = model(torch.zeros(256, 2)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.evaluate(torch.zeros(4000, 2))
    assert after["kl"].mean() < 0.5 * before and after["kl"].mean() > -0.05
    assert after["log_z_bound"].mean() < model.log_z + 0.05


def test_energy_flow_trains_from_the_command_line_and_draws_target_and_flow(workdir):
    run_genflow(
        ["train", "model=energy_flow", "dataset=u3", "model.num_flows=4", *RUN_TINY], workdir
    )
    [run_dir] = run_dirs(workdir)
    # eval and sample in-process (the CLI start-up is what the train run above tested)
    summary = eval_task.run(compose_config([f"run={run_dir}", "device=cpu"], name="eval"))
    assert summary["log_z"] == pytest.approx(log_partition(ENERGIES["u3"]), rel=1e-9)
    assert summary["kl"] == pytest.approx(summary["log_z"] - summary["log_z_bound"], rel=1e-9)
    assert "bpd" not in summary and summary["kl"] > 0
    assert (run_dir / "samples" / "density_0000020.png").stat().st_size > 1000
    # genflow sample draws the flow's own picture too (a planar flow cannot score a grid)
    result = sample_task.run(
        compose_config([f"run={run_dir}", "device=cpu", "sample.n=100"], name="sample")
    )
    assert torch.load(result["tensor"], weights_only=True).shape == (100, 2)
    with pytest.raises(GenflowError, match="is not class-conditional"):
        sample_task.run(compose_config([f"run={run_dir}", "sample.label=0"], name="sample"))


@pytest.mark.parametrize("flow", ["planar", "realnvp"])
def test_energy_flow_keeps_the_model_contract(flow):
    """What test_contract.py checks of the data models, for the energy flow on U1: declared
    metrics, a state_dict round trip, eval mode everywhere, float64, samples of the shape."""

    def build(seed):
        torch.manual_seed(seed)
        return perturbed(EnergyFlow((2,), None, "u1", flow, num_flows=3, hidden_features=8), 0.2)

    def seeded_bound(model):
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(5)
            return model.evaluate(torch.zeros(50, 2))["log_z_bound"]

    trained, fresh = build(0).eval(), build(1).eval()
    assert set(trained.evaluate(torch.zeros(4, 2))) == set(EnergyFlow.eval_metrics)
    assert not any(m.training for m in trained.modules())
    before = seeded_bound(fresh)
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(seeded_bound(fresh), seeded_bound(trained))
    assert not torch.allclose(before, seeded_bound(fresh))
    assert trained.double().sample(3).dtype == torch.float64
    assert trained.sample(7).shape == (7, 2)


def test_training_loss_anneals_beta_on_the_energy():
    """model.anneal_steps: the loss is E_q[log q + beta U] with beta = 0.01 + step / steps, at
    most 1; the reported bound and KL always use U itself."""
    model = EnergyFlow((2,), None, "u2", "planar", num_flows=2, anneal_steps=100).double()
    for step, beta in ((0, 0.01), (50, 0.51), (100, 1.0), (400, 1.0)):
        model.set_training_step(step)
        torch.manual_seed(3)
        out = model(torch.zeros(64, 2))
        torch.manual_seed(3)
        z, log_q = model.draw(64)
        energy = model.energy(z)
        torch.testing.assert_close(out.loss, (log_q + beta * energy).mean())
        torch.testing.assert_close(out.metrics["log_z_bound"], -(log_q + energy).mean())
