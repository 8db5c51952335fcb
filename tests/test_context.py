"""Densities conditioned on a context vector, p(x | c): every flow family takes one, each
p(x | c) is normalised, the context reaches the conditioners as well as the base, bad
contexts are one sentence, and a conditional flow learns a density whose shape moves with c."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import RUN_TINY, last_json_line, perturbed, run_dirs, run_genflow

from genflow.models.glow import Glow
from genflow.models.maf import MAF
from genflow.models.nice import NICE
from genflow.models.nsf import NSF
from genflow.models.realnvp import RealNVP
from genflow.nn.residual_mlp import ResidualMLP

SMALL = {"hidden_features": 16}
VECTOR_FAMILIES = {
    "nsf_coupling": lambda **k: NSF((2,), num_layers=2, **SMALL, **k),
    "nsf_autoregressive": lambda **k: NSF((2,), kind="autoregressive", num_layers=2, **SMALL, **k),
    "maf": lambda **k: MAF((2,), num_layers=2, batch_norm=False, **SMALL, **k),
    "realnvp": lambda **k: RealNVP((2,), num_layers=2, hidden_layers=1, **SMALL, **k),
    "nice": lambda **k: NICE((2,), num_layers=2, hidden_layers=1, **SMALL, **k),
}


def _conditional(name: str, **extra):
    torch.manual_seed(0)
    model = VECTOR_FAMILIES[name](context_features=3, **extra).double().eval()
    return perturbed(model, 0.1)


@pytest.mark.parametrize("name", VECTOR_FAMILIES)
def test_each_p_x_given_c_integrates_to_one(name):
    """The grid integral of p(x | c) over the plane is 1 for several contexts (and differs
    between them: the context is used)."""
    model = _conditional(name, context_net={"features": 4, "hidden_features": 8})
    side = torch.linspace(-7, 7, 351, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side)
    cell = (side[1] - side[0]) ** 2
    densities = []
    with torch.no_grad():
        for c in ([0.0, 0.0, 0.0], [1.5, -1.0, 0.5], [-2.0, 2.0, 1.0]):
            log_p = model.log_prob(grid, torch.tensor(c, dtype=torch.float64))
            densities.append(log_p.exp())
            assert abs(float(log_p.exp().sum() * cell) - 1.0) < 5e-3
    assert (densities[0] - densities[1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", VECTOR_FAMILIES)
def test_the_context_reaches_the_conditioners_not_only_the_base(name):
    """With the base's dependence on c removed, a vector flow's density still moves with c
    (its conditioners read it); Glow's image stack takes c in its base only."""
    model = _conditional(name)
    with torch.no_grad():
        model.context_base.weight.zero_()
        model.context_base.bias.zero_()
    x = torch.randn(4, 2, dtype=torch.float64)
    c = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        assert (model.log_prob(x, c) - model.log_prob(x, c + 1.0)).abs().max() > 1e-4
    image = Glow(
        (1, 4, 4), levels=4, num_levels=1, steps_per_level=1, hidden_channels=4, context_features=3
    )
    x_image = torch.randint(0, 4, (2, 1, 4, 4))
    image.initialize(x_image, torch.zeros(2, 3))
    with torch.no_grad():
        torch.manual_seed(1)
        a = image.log_prob(x_image, torch.zeros(2, 3))
        torch.manual_seed(1)
        b = image.log_prob(x_image, torch.ones(2, 3))
    torch.testing.assert_close(a, b)  # the base starts at N(0, I) for every context


def test_a_residual_conditioner_reads_the_context_in_every_block():
    """The spline coupling's residual conditioner gates each block by the context (as the
    paper's code): with the base and the input layer blind to c, the density still moves with
    c, and it stops moving when the gates are made blind too."""
    model = _conditional("nsf_coupling")
    nets = [m for m in model.modules() if isinstance(m, ResidualMLP)]
    assert nets and all(len(net.blocks) == 2 for net in nets)
    with torch.no_grad():
        model.context_base.weight.zero_()
        model.context_base.bias.zero_()
        for net in nets:
            net.input.weight[:, -3:] = 0.0
    x = torch.randn(4, 2, dtype=torch.float64)
    c = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        assert (model.log_prob(x, c) - model.log_prob(x, c + 1.0)).abs().max() > 1e-4
        for net in nets:
            for block in net.blocks:
                block.gate.weight.zero_()
        torch.testing.assert_close(model.log_prob(x, c), model.log_prob(x, c + 1.0))


def test_bad_contexts_are_one_sentence():
    model = _conditional("nsf_coupling")
    x = torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"the context has shape \(5, 2\), but this NSF takes 3 values per example"
    ):
        model.log_prob(x, torch.randn(5, 2))
    with pytest.raises(
        ValueError, match="conditioned on a context of 3 values .*: pass the context"
    ):
        model.log_prob(x)
    with pytest.raises(ValueError, match="4 contexts for 5 examples"):
        model.log_prob(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match="is not conditional"):
        NSF((2,), num_layers=1, **SMALL).log_prob(x.float(), torch.randn(5, 3))
    with pytest.raises(ValueError, match="model.context_net.features must be an integer >= 0"):
        NSF((2,), num_layers=1, context_features=2, context_net={"features": -1})
    with pytest.raises(ValueError, match="a class is one kind of context: use one of them"):
        NSF((2,), num_layers=1, context_features=2, num_classes=3)


def test_a_class_conditional_glow_initialises_from_a_labelled_batch():
    """ActNorm's data-dependent start runs the conditional density, which needs the labels:
    the training start hands them over (it used to fail before the first step)."""
    model = Glow(
        (1, 4, 4), levels=4, num_levels=1, steps_per_level=1, hidden_channels=4, num_classes=2
    )
    x = torch.randint(0, 4, (8, 1, 4, 4))
    model.initialize(x, torch.arange(8) % 2)
    assert all(bool(m.initialized) for m in model.modules() if hasattr(m, "initialized"))


def _moving_density(c: torch.Tensor, n_per: int = 1, generator=None):
    """x | c: a curved ridge that moves and widens with c, with an exact log-density."""
    eps = torch.randn(len(c), 2, generator=generator)
    x0 = c + 0.3 * eps[:, 0]
    x1 = x0.pow(2) - c + (0.1 + 0.2 * c.abs()) * eps[:, 1]
    return torch.stack((x0, x1), 1)


def _moving_log_prob(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    normal = torch.distributions.Normal(0.0, 1.0)
    s1 = 0.1 + 0.2 * c.abs()
    e0 = (x[:, 0] - c) / 0.3
    e1 = (x[:, 1] - x[:, 0].pow(2) + c) / s1
    return normal.log_prob(e0) - math.log(0.3) + normal.log_prob(e1) - torch.log(s1)


def test_a_conditional_spline_flow_learns_a_density_whose_shape_moves_with_c():
    """Trained on (x, c) pairs for 600 steps, NSF's p(x | c) is within 0.05 nats of the true
    conditional density on held-out pairs, and its samples at three contexts have the true
    means and spreads."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = NSF(
        (2,), num_layers=3, hidden_features=32, num_bins=8, tail_bound=4.0, context_features=1
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 600)
    for _ in range(600):
        c = torch.rand(256, generator=generator) * 2 - 1
        x = _moving_density(c, generator=generator)
        loss = -model.log_prob(x, c[:, None]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    c = torch.rand(4000, generator=generator) * 2 - 1
    x = _moving_density(c, generator=generator)
    with torch.no_grad():
        gap = (_moving_log_prob(x, c) - model.log_prob(x, c[:, None])).mean()
    assert -0.01 < gap < 0.05  # a KL divergence (0.008 when written): not below 0 beyond noise
    for value in (-0.8, 0.0, 0.8):
        with torch.no_grad():
            drawn = model.sample(4000, y=torch.tensor([value]))
        truth = _moving_density(torch.full((4000,), value), generator=generator)
        torch.testing.assert_close(drawn.mean(0), truth.mean(0), atol=0.05, rtol=0)
        torch.testing.assert_close(drawn.std(0), truth.std(0), atol=0.03, rtol=0.15)


def _write_table(path, rows: int = 400):
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, size=(rows, 2))
    x = np.stack(
        [
            c[:, 0] + 0.3 * rng.normal(size=rows),
            c[:, 1] * 10 + rng.normal(size=rows),
            rng.normal(size=rows),
        ],
        1,
    )
    header = "x0,x1,x2,c0,c1"
    np.savetxt(path, np.column_stack([x, c]), delimiter=",", header=header, comments="")
    return path


def test_a_conditional_table_trains_evaluates_and_samples_from_the_command_line(workdir):
    path = _write_table(workdir / "pairs.csv")
    tiny = ["model.hidden_features=8", "model.num_layers=2", *RUN_TINY]
    table = ["dataset=tabular", f"dataset.path={path}", "dataset.context_columns=[c0,c1]"]
    run_genflow(["train", "model=nsf", *table, *tiny], workdir)
    (run,) = run_dirs(workdir)
    summary = last_json_line(run_genflow(["eval", f"run={run}"], workdir).stdout)
    assert summary["conditional_on"] == "context" and math.isfinite(summary["nll"])
    import genflow

    loaded = genflow.load_run(run)
    torch.testing.assert_close(
        -loaded.log_prob(loaded.data("test"), context=loaded.contexts("test")).mean().item(),
        summary["nll"],
        atol=1e-4,
        rtol=0,
    )
    assert loaded.sample(7, context=[0.5, -0.5]).shape == (7, 3)
    for spec, rows in (("[0.5,-0.5]", 1), ("val", 40)):
        out = last_json_line(
            run_genflow(
                ["sample", f"run={run}", f"sample.context={spec}", "sample.n=10"], workdir
            ).stdout
        )
        used = torch.load(out["context"])
        assert used.shape == (10, 2) and len(torch.unique(used, dim=0)) == min(rows, 10)
    np.save(workdir / "contexts.npy", np.array([[0.0, 1.0], [1.0, 0.0]]))
    out = last_json_line(
        run_genflow(
            ["sample", f"run={run}", f"sample.context={workdir / 'contexts.npy'}", "sample.n=4"],
            workdir,
        ).stdout
    )
    torch.testing.assert_close(torch.load(out["context"])[:, 0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    bad = run_genflow(["sample", f"run={run}", "sample.context=[1,2,3]"], workdir, check=False)
    assert bad.returncode == 2
    assert "sample.context gives contexts of 3 values; this run's model takes 2" in bad.stderr


def test_a_table_with_a_context_and_a_model_that_cannot_take_one_is_refused(
    workdir, capsys, monkeypatch
):
    from genflow.cli import main

    monkeypatch.chdir(workdir)
    path = _write_table(workdir / "pairs.csv")
    code = main(
        [
            "train",
            "model=vae",
            "dataset=tabular",
            f"dataset.path={path}",
            "dataset.context_columns=[c0]",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "carries a context of 1 values per example, but model VAE cannot be conditioned on one"
        in err
    )
