"""Continuous normalizing flows (genflow/models/cnf.py, genflow/bijections/ode.py): the
instantaneous change of variables against closed forms, a trained density that integrates to
one, Hutchinson's estimate within its reported standard error, sampling and encoding as
inverses, flow matching's paths, solver budgets as one sentence, and the CLI end to end."""

from __future__ import annotations

import math
import re
import time

import pytest
import torch
from conftest import (
    RUN_TINY,
    compose_config,
    last_json_line,
    perturbed,
    read_records,
    run_dirs,
    run_genflow,
)
from torch import nn

from genflow.bijections.ode import ODEFlow, Solver, SolverBudgetExceeded
from genflow.engine.evaluate import evaluate
from genflow.models.cnf import CNF

TIGHT = {"method": "dopri5", "rtol": 1e-10, "atol": 1e-10}
SOLVERS = {"solver": TIGHT, "sample_solver": TIGHT, "train_solver": TIGHT}


class Linear(nn.Module):
    """v(t, x) = (A + t B) x: a time-dependent linear field."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor | None = None):
        super().__init__()
        self.a = nn.Parameter(a)
        self.b = nn.Parameter(torch.zeros_like(a) if b is None else b)

    def forward(self, t, x, context=None):
        return x @ (self.a + t * self.b).T


def _vector_cnf(features: int = 3, **kwargs) -> CNF:
    torch.manual_seed(0)
    options = dict(hidden_features=16, num_layers=2, **SOLVERS)
    options.update(kwargs)
    return CNF((features,), levels=None, **options).double()


def test_a_constant_linear_field_gives_the_gaussian_it_transports():
    """dx/dt = A x carries N(0, I) at t = 0 to N(0, e^A e^A^T) at t = 1: the CNF's log p(x) is
    that Gaussian's log-density (base, direction and the log-det's sign all counted)."""
    torch.manual_seed(0)
    a = 0.6 * torch.randn(3, 3, dtype=torch.float64)
    model = _vector_cnf(3).eval()
    model.flow.velocity = Linear(a)
    x = 2 * torch.randn(7, 3, dtype=torch.float64)
    m = torch.linalg.matrix_exp(a)
    truth = torch.distributions.MultivariateNormal(
        torch.zeros(3, dtype=torch.float64), covariance_matrix=m @ m.T
    ).log_prob(x)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), truth, atol=1e-8, rtol=1e-8)
        z = model.encode(x)
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(-a).T, atol=1e-8, rtol=1e-8)


def test_a_time_dependent_linear_field_matches_its_closed_form_log_det():
    """For v = (A + t B) x with A and B commuting (B = A^2), the flow map from t = 0 to 1 is
    exp(A + B / 2); its log-det is tr(A) + tr(B) / 2 whatever x is, and forward and inverse
    agree on it with opposite signs."""
    torch.manual_seed(1)
    a = 0.4 * torch.randn(4, 4, dtype=torch.float64)
    flow = ODEFlow(Linear(a, a @ a), (4,), **SOLVERS).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        z, logdet = flow(x)
        back, inverse_logdet = flow.inverse(z)
    expected = -(torch.trace(a) + torch.trace(a @ a) / 2)
    torch.testing.assert_close(logdet, expected.expand(5), atol=1e-9, rtol=0)
    torch.testing.assert_close(inverse_logdet, -logdet, atol=1e-9, rtol=0)
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(-(a + a @ a / 2)).T)
    torch.testing.assert_close(back, x, atol=1e-8, rtol=0)


def test_hutchinson_on_a_linear_field_is_unbiased_and_its_variance_is_the_theory():
    """For v = A x and a Rademacher probe e, e^T A e = tr(A) + sum over i < j of
    (A_ij + A_ji) e_i e_j, with variance sum over i < j of (A_ij + A_ji)^2: the reported
    standard error over 400 probes is that theory's, and the mean is tr(A) within it."""
    torch.manual_seed(2)
    a = 0.5 * torch.randn(3, 3, dtype=torch.float64)
    flow = ODEFlow(Linear(a), (3,), **SOLVERS, divergence="hutchinson", probes=400).double().eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    with torch.no_grad():
        solved = flow.transform(x)
    off = a + a.T
    variance = (off.pow(2).sum() - off.diagonal().pow(2).sum()) / 2
    se = solved.logdet_var.sqrt()
    torch.testing.assert_close(se, (variance / 400).sqrt().expand(6), rtol=0.25, atol=0)
    assert ((solved.logdet + torch.trace(a)).abs() < 4 * se).all()


def test_the_exact_divergence_is_the_trace_of_the_autograd_jacobian():
    model = perturbed(_vector_cnf(3, context_features=2), 0.3)
    x = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64)
    h = model.context_embedding(c)
    _, div = model.flow.divergence(t, x, h, "exact", create_graph=False)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(
            lambda xi, i=i: model.flow.velocity(t, xi[None], h[i : i + 1])[0], x[i]
        )
        torch.testing.assert_close(div[i], torch.trace(jac))


def test_a_trained_2d_density_integrates_to_one_on_a_grid():
    """Flow matching on two moons for 300 steps, then log p on a 161 x 161 grid over
    [-6, 6]^2: the mass is 1, and most of it sits where the data is."""
    from sklearn.datasets import make_moons

    data = torch.from_numpy(make_moons(2000, noise=0.05, random_state=0)[0]).double()
    data = (data - data.mean(0)) / data.std(0)
    torch.manual_seed(0)
    rk4 = {"method": "rk4", "steps": 40}
    model = CNF((2,), hidden_features=64, num_layers=2, solver=rk4, sample_solver=rk4).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        batch = data[torch.randint(0, len(data), (256,))]
        loss = model(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.flow.solver = Solver(method="rk4", steps=20)  # 1.0002 here; dopri5 at 1e-7: 1 + 1e-8
    side = torch.linspace(-6, 6, 161, dtype=torch.float64)
    grid = torch.cartesian_prod(side, side)
    cell = float((side[1] - side[0]) ** 2)
    with torch.no_grad():
        density = model.eval().log_prob(grid).exp()
        assert abs(float(density.sum()) * cell - 1.0) < 2e-3
        # trained: the data are far likelier than under N(0, I)
        gain = model.log_prob(data[:500]).mean() - model.base.log_prob(data[:500]).mean()
    assert gain > 0.5


def _image_cnf(**kwargs) -> CNF:
    torch.manual_seed(0)
    model = CNF((1, 4, 4), levels=5, hidden_features=16, num_layers=2, **kwargs)
    return perturbed(model, 0.3).eval()


def test_hutchinson_agrees_with_the_exact_trace_within_its_standard_error():
    """On a small image model (4x4, 5 levels) the split's nll by Hutchinson's estimator with
    16 probes per example is within 4 reported standard errors of the exact trace's, with
    the same dequantization noise, and the standard error is not zero."""
    solver = {"method": "rk4", "steps": 8}
    exact = _image_cnf(divergence="exact", solver=solver)
    hutch = _image_cnf(divergence="hutchinson", probes=16, solver=solver)
    hutch.load_state_dict(exact.state_dict())
    data = torch.randint(0, 5, (40, 1, 4, 4))
    # one batch: the probes are drawn after the dequantization noise, so both see the same u
    a = evaluate(exact, data, batch_size=40, seed=3)
    b = evaluate(hutch, data, batch_size=40, seed=3)
    assert "nll_se" not in a and b["nll_se"] > 0
    assert abs(a["nll"] - b["nll"]) < 4 * b["nll_se"]
    assert b["bpd_se"] == pytest.approx(b["nll_se"] / (16 * math.log(2)))
    assert a["nfe"] == b["nfe"] == 8 * 4  # rk4: four evaluations a step


class Zero(nn.Module):
    def forward(self, t, x, context=None):
        return torch.zeros_like(x)


def test_the_evaluation_counts_the_same_preprocessing_terms_as_the_discrete_flows():
    """With a zero velocity the CNF is the identity after preprocessing: its nll is that of a
    FlowModel whose flow is the identity (dequantization, scaling and logit counted the same
    way, so bpd sits beside RealNVP's and Glow's); and evaluate agrees with log_prob."""
    from genflow.bijections.base import Compose
    from genflow.models.flow import FlowModel

    data = torch.randint(0, 5, (6, 1, 4, 4))
    model = _image_cnf(solver={"method": "rk4", "steps": 4})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        evaluated = model.evaluate(data)["nll"]
        torch.manual_seed(0)
        torch.testing.assert_close(evaluated, -model.log_prob(data).detach())
    model.flow.velocity = Zero()
    identity = FlowModel(Compose([]), (1, 4, 4), levels=5, logit_alpha=model.logit.alpha)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        nll = model.evaluate(data)["nll"]
        torch.manual_seed(0)
        torch.testing.assert_close(nll, -identity.log_prob(data))


def test_sampling_then_encoding_returns_the_starting_noise():
    model = perturbed(_vector_cnf(3), 0.3).eval()
    z = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        x = model.flow.transform(z, inverse=True, logdet=False).out
        back = model.flow.transform(x, logdet=False).out
    assert (x - z).abs().max() > 0.1  # the field moved the points
    torch.testing.assert_close(back, z, atol=1e-8, rtol=0)


@pytest.mark.parametrize("path, sigma_min", [("ot", 0.0), ("ot", 0.1), ("vp", 0.0)])
def test_the_conditional_path_runs_from_noise_to_data_at_its_stated_velocity(path, sigma_min):
    model = CNF((3,), path=path, sigma_min=sigma_min).double()
    x0, x1 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    at = lambda s: model.conditional_path(x0, x1, torch.full((5,), s, dtype=torch.float64))  # noqa: E731
    torch.testing.assert_close(at(0.0)[0], x0)
    torch.testing.assert_close(at(1.0)[0], x1 + sigma_min * x0)  # N(x1, sigma_min^2) at t = 1
    for s in (0.2, 0.5, 0.9):  # u_t is d x_t / dt
        h = 1e-6
        slope = (at(s + h)[0] - at(s - h)[0]) / (2 * h)
        torch.testing.assert_close(at(s)[1], slope, atol=1e-6, rtol=1e-6)


def test_flow_matching_regresses_the_path_velocity():
    """The loss is the mean squared error between the field and u_t at a random point of the
    path: a field that returns u_t exactly (cheating with the drawn x0, x1) scores zero."""
    model = _vector_cnf(3, sigma_min=0.1)
    x1 = torch.randn(64, 3, dtype=torch.float64)
    torch.manual_seed(5)
    loss = model(x1).loss
    torch.manual_seed(5)  # the same x0 and t as the loss drew
    x0 = torch.randn_like(x1)
    t = torch.rand(64, dtype=x1.dtype)
    xt, ut = model.conditional_path(x0, x1, t)
    expected = (model.flow.velocity(t, xt) - ut).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def test_ffjord_trains_the_likelihood_and_the_gradient_reaches_every_parameter():
    model = _vector_cnf(2, objective="ffjord", train_solver={"method": "rk4", "steps": 4})
    x = torch.randn(16, 2, dtype=torch.float64)
    out = model.train()(x)
    model.flow.solver = model.flow.train_solver  # the same solve, without the graph
    with torch.no_grad():
        expected = -model.eval().log_prob(x).mean() / (2 * math.log(2))
    torch.testing.assert_close(out.loss.detach(), expected, atol=1e-10, rtol=0)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_ffjord_gradient_is_the_derivative_of_its_loss(divergence):
    """The gradient back-propagated through the solver and the divergence (exact trace via
    torch.func, or a fixed Hutchinson probe) matches central differences of the same loss."""
    rk4 = {"method": "rk4", "steps": 3}
    model = perturbed(
        _vector_cnf(3, objective="ffjord", divergence=divergence, train_solver=rk4), 0.3
    ).train()
    x = torch.randn(5, 3, dtype=torch.float64)

    def loss() -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(7)  # the same probes every time
            return model(x).loss

    model.zero_grad()
    loss().backward()
    for name, p in list(model.named_parameters())[:4]:
        index = (0,) * p.dim()
        values = []
        for shift in (1e-6, -2e-6, 1e-6):  # the loss solved as training solves it (with grad)
            with torch.no_grad():
                p[index] += shift
            values.append(loss().detach())
        numeric = (values[0] - values[1]) / 2e-6
        torch.testing.assert_close(p.grad[index], numeric, atol=1e-6, rtol=1e-5, msg=name)


def test_a_class_or_a_context_conditions_the_velocity_field():
    rk4 = {"method": "rk4", "steps": 10}
    for options, condition in (
        ({"num_classes": 3}, (torch.tensor([0]), torch.tensor([2]))),
        ({"context_features": 2}, (torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, -1.0]]))),
    ):
        model = perturbed(_vector_cnf(2, solver=rk4, **options), 0.3).eval()
        x = torch.randn(5, 2, dtype=torch.float64)
        with torch.no_grad():
            first = model.log_prob(
                x, condition[0].double() if condition[0].is_floating_point() else condition[0]
            )
            second = model.log_prob(
                x, condition[1].double() if condition[1].is_floating_point() else condition[1]
            )
        assert (first - second).abs().max() > 1e-3
        with pytest.raises(ValueError, match="pass the"):
            model.log_prob(x)


class Blowup(nn.Module):
    def forward(self, t, x, context=None):
        return x * float("inf") if float(t) < 0.5 else x


class Slow(nn.Module):
    def forward(self, t, x, context=None):
        time.sleep(0.02)
        return -x


@pytest.mark.parametrize(
    "velocity, solver, match",
    [
        (None, {"method": "dopri5", "max_nfe": 5}, "needed more than max_nfe=5 function"),
        (None, {"method": "rk4", "steps": 200, "max_nfe": 100}, "max_nfe=100"),
        (Slow(), {"method": "rk4", "steps": 100, "max_seconds": 0.05}, "ran past max_seconds"),
        (Blowup(), {"method": "dopri5"}, "cannot meet its tolerance"),
    ],
)
def test_a_budget_or_a_tolerance_that_cannot_be_met_is_one_sentence(velocity, solver, match):
    model = _vector_cnf(2, solver=solver).eval()
    if velocity is not None:
        model.flow.velocity = velocity
    with pytest.raises(SolverBudgetExceeded, match=match) as info:
        with torch.no_grad():
            model.log_prob(torch.randn(3, 2, dtype=torch.float64))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.objective=maximum", "model.objective must be one of flow_matching, ffjord"),
        ("model.path=straight", "model.path must be one of ot, vp"),
        ("model.solver.method=heun", "model.solver.method must be one of"),
        ("model.sample_solver.max_nfe=0", "model.sample_solver.max_nfe must be a positive"),
        ("model.train_solver.rtol=-1", "model.train_solver.rtol must be a positive number"),
        ("+model.solver.order=4", "model.solver has no key 'order'"),
        ("model.dequantization=variational", "flow matching trains none"),
        ("model.divergence=trace", "model.divergence must be one of auto, exact, hutchinson"),
        ("model.probes=0", "model.probes must be a positive integer"),
        ("model.sigma_min=1.0", "model.sigma_min must be in [0, 1)"),
    ],
)
def test_bad_cnf_settings_are_one_sentence(override, match):
    from genflow.errors import GenflowError
    from genflow.validation import validate_train_config

    cfg = compose_config(["model=cnf", override])
    with pytest.raises(GenflowError, match=re.escape(match)) as info:
        validate_train_config(cfg)
    assert "\n" not in str(info.value)


def test_a_bad_cnf_setting_on_the_command_line_exits_before_any_run(tmp_path):
    proc = run_genflow(
        ["train", "model=cnf", "model.solver.method=heun", *RUN_TINY], tmp_path, check=False
    )
    assert proc.returncode == 2 and "model.solver.method must be one of" in proc.stderr
    assert not run_dirs(tmp_path)


def test_train_eval_and_sample_a_cnf_on_digits(tmp_path):
    """genflow train model=cnf on digits (a few steps, rk4 solvers), then eval and sample with
    their own solver settings: every figure comes with its NFE and the solver behind it."""
    rk4 = ["method=rk4", "steps=6"]
    solvers = [f"model.{s}.{o}" for s in ("solver", "sample_solver") for o in rk4]
    small = ["model.hidden_features=32", "model.num_layers=1"]
    run_genflow(["train", "model=cnf", *small, *solvers, *RUN_TINY], tmp_path)
    (run,) = run_dirs(tmp_path)
    val = [r for r in read_records(run) if r["split"] == "val"]
    assert val and all(r["nfe"] == 24 for r in val)  # rk4: 4 evaluations a step
    proc = run_genflow(["eval", f"run={run}"], tmp_path)
    assert "24 NFE" in proc.stdout
    summary = last_json_line(proc.stdout)
    assert summary["solver"] == "rk4 with 6 steps" and summary["divergence"] == "exact"
    proc = run_genflow(
        ["eval", f"run={run}", "eval.solver.steps=3", "out=" + str(tmp_path / "e")], tmp_path
    )
    assert last_json_line(proc.stdout)["nfe"] == 12
    proc = run_genflow(["eval", f"run={run}", "eval.probes=4"], tmp_path, check=False)
    assert proc.returncode == 2 and "eval.probes applies to Hutchinson's divergence" in proc.stderr
    proc = run_genflow(["eval", f"run={run}", "eval.solver.method=heun"], tmp_path, check=False)
    assert proc.returncode == 2 and "eval.solver.method must be one of" in proc.stderr
    proc = run_genflow(
        [
            "sample",
            f"run={run}",
            "sample.n=4",
            "sample.solver.method=euler",
            "sample.solver.steps=5",
        ],
        tmp_path,
    )
    summary = last_json_line(proc.stdout)
    assert summary["nfe"] == 5 and summary["solver"] == "euler with 5 steps"
    assert any((run / "samples").iterdir())
    proc = run_genflow(["report", str(run), "--out", str(tmp_path / "r")], tmp_path)
    header, _, row = (tmp_path / "r" / "report.md").read_text().splitlines()[:3]
    assert header.rstrip(" |").endswith("test_nfe") and row.rstrip(" |").endswith("24")


def test_eval_solver_settings_on_another_family_are_one_sentence():
    from genflow.errors import GenflowError
    from genflow.models.realnvp import RealNVP
    from genflow.tasks.common import apply_solver_settings

    model = RealNVP((2,), num_layers=2)
    apply_solver_settings(model, {"method": None}, "solver", "eval.solver")  # all null: nothing
    with pytest.raises(GenflowError, match=r"eval.solver applies to continuous flows .* RealNVP"):
        apply_solver_settings(model, {"method": "rk4"}, "solver", "eval.solver")
    with pytest.raises(GenflowError, match=r"eval.probes applies to continuous flows"):
        apply_solver_settings(model, {}, "solver", "eval.solver", probes=4)
