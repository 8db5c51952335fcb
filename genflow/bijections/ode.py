"""A continuous-time flow: the ODE dx/dt = v(t, x | c) on t in [0, 1] as a bijection.

t = 0 is the base (noise) and t = 1 the data, flow matching's convention (Lipman et al. 2023,
arXiv:2210.02747). ``forward`` maps data to noise by solving the ODE from t = 1 back to t = 0,
``inverse`` maps noise to data. The log-determinant is the instantaneous change of variables
(Chen et al. 2018, arXiv:1806.07366; Grathwohl et al. 2019, FFJORD, arXiv:1810.01367):
along a solution, d/dt log|det dx_t/dx_s| = div v(t, x_t), so the log-det of either map is the
integral of the divergence along the direction solved, integrated by the same solver beside
the state. The divergence is exact (the trace of the Jacobian, from ``torch.func``) or
Hutchinson's estimate e^T (dv/dx) e with the probe e fixed over a solve, Rademacher or
Gaussian; several probes give a mean and the variance of that mean.

The solvers are torchdiffeq's (``odeint``): adaptive (dopri5, bosh3, adaptive_heun: ``rtol``,
``atol``) or fixed-step (euler, midpoint, rk4: ``steps`` over [0, 1]). Every solve counts its
function evaluations (NFE); one that would pass ``max_nfe`` or ``max_seconds``, or whose step
size underflows, stops with one sentence instead of running on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor, nn

from genflow.bijections.base import Bijection
from genflow.errors import GenflowError

ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun")
FIXED = ("euler", "midpoint", "rk4")
METHODS = ADAPTIVE + FIXED
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


class SolverBudgetExceeded(GenflowError):
    """A solve that would pass its NFE or time budget, or whose tolerance cannot be met."""


@dataclass(frozen=True)
class Solver:
    """How one kind of solve runs (``model.solver``, ``model.sample_solver``,
    ``model.train_solver``)."""

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    steps: int = 100  # fixed-step methods: equal steps over [0, 1]
    max_nfe: int = 10_000  # the most function evaluations one solve may take
    max_seconds: float | None = None  # the most wall-clock seconds one solve may take

    @classmethod
    def from_config(cls, cfg, key: str = "model.solver") -> Solver:
        """A solver from a config mapping (unset keys at their defaults), or one sentence."""
        if isinstance(cfg, Solver):
            return cfg
        options = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"{key} has no key '{unknown[0]}'; its keys: {', '.join(sorted(known))}"
            )
        solver = cls(**options)
        solver.check(key)
        return solver

    def check(self, key: str) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"{key}.method must be one of {', '.join(METHODS)}, got {self.method!r}"
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{key}.{name} must be a positive number, got {value!r}")
        for name in ("steps", "max_nfe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}.{name} must be a positive integer, got {value!r}")
        s = self.max_seconds
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0):
            raise ValueError(f"{key}.max_seconds must be null or a positive number, got {s!r}")

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE

    def describe(self) -> str:
        if self.adaptive:
            return f"{self.method} (rtol={self.rtol:g}, atol={self.atol:g})"
        return f"{self.method} with {self.steps} steps"


class Solved(NamedTuple):
    """One solve: the end state, the log-det of the map solved (0 without one), the variance
    of a Hutchinson log-det's mean over its probes (None where exact or a single probe), and
    the number of function evaluations."""

    out: Tensor
    logdet: Tensor
    logdet_var: Tensor | None
    nfe: int


class _Dynamics:
    """The right-hand side torchdiffeq integrates: (dx/dt, d(log-det)/dt) = (v, div v)."""

    def __init__(self, flow: ODEFlow, context, eps, create_graph: bool, solver: Solver, what: str):
        self.flow = flow
        self.context = context
        self.eps = eps  # None: no log-det; a tensor: Hutchinson's probe; "exact": the trace
        self.create_graph = create_graph
        self.solver = solver
        self.what = what
        self.nfe = 0
        self.start = time.monotonic()

    def __call__(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        self._check_budget()
        x = state[0]
        if self.eps is None:
            return self.flow.velocity(t, x, self.context), torch.zeros_like(state[1])
        return self.flow.divergence(t, x, self.context, self.eps, self.create_graph)

    def _check_budget(self) -> None:
        solver = self.solver
        if self.nfe > solver.max_nfe:
            raise SolverBudgetExceeded(
                f"the {solver.describe()} solve of {self.what} needed more than "
                f"max_nfe={solver.max_nfe} function evaluations; raise max_nfe, loosen rtol/atol "
                "or use a fixed-step method (method=rk4 steps=N)"
            )
        if solver.max_seconds is not None and time.monotonic() - self.start > solver.max_seconds:
            raise SolverBudgetExceeded(
                f"the {solver.describe()} solve of {self.what} ran past max_seconds="
                f"{solver.max_seconds:g} after {self.nfe - 1} function evaluations; raise "
                "max_seconds, loosen rtol/atol or take fewer fixed steps"
            )


class ODEFlow(Bijection):
    """x(1) = data <-> x(0) = noise through dx/dt = v(t, x | c), on flattened events.

    ``velocity(t, x, context)`` maps a time, a (B, D) state and a (B, width) context (or None)
    to (B, D). ``solver`` runs the likelihood (``forward``), ``sample_solver`` the sampler
    (``inverse``) and ``train_solver`` a ``forward`` whose graph is kept for training (FFJORD).
    ``divergence``: ``exact`` or ``hutchinson`` (``probe`` rademacher | gaussian, ``probes``
    per example at evaluation; one while training).
    """

    def __init__(
        self,
        velocity: nn.Module,
        event_shape: tuple[int, ...],
        solver: Solver | dict | None = None,
        sample_solver: Solver | dict | None = None,
        train_solver: Solver | dict | None = None,
        divergence: str = "exact",
        probe: str = "rademacher",
        probes: int = 1,
    ):
        super().__init__()
        check_divergence(divergence, probe, probes)
        self.velocity = velocity
        self.event_shape = tuple(event_shape)
        self.features = math.prod(self.event_shape)
        self.solver = Solver.from_config(solver, "model.solver")
        self.sample_solver = Solver.from_config(sample_solver, "model.sample_solver")
        self.train_solver = Solver.from_config(train_solver, "model.train_solver")
        self.divergence_kind = divergence
        self.probe = probe
        self.probes = int(probes)
        self.last_nfe = 0

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        solved = self.transform(x, context)
        return solved.out, solved.logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        solved = self.transform(y, context, inverse=True)
        return solved.out, solved.logdet

    def transform(
        self,
        x: Tensor,
        context: Tensor | None = None,
        inverse: bool = False,
        logdet: bool = True,
        probes: int | None = None,
        solver: Solver | None = None,
    ) -> Solved:
        """Solve from data to noise (or, ``inverse``, from noise to data), with the log-det of
        that map unless ``logdet=False``; ``probes`` Hutchinson probes per example (default:
        ``self.probes`` in eval mode, one in training)."""
        from torchdiffeq import odeint

        training = self.training and torch.is_grad_enabled()
        if solver is None:
            solver = (
                self.sample_solver if inverse else (self.train_solver if training else self.solver)
            )
        batch = x.shape[0]
        y = x.reshape(batch, -1)
        if y.shape[1] != self.features:
            raise ValueError(f"ODEFlow on {self.features} values got {y.shape[1]}")
        hutchinson = logdet and self.divergence_kind == "hutchinson"
        k = 1  # probes per example: several only for an evaluation's Hutchinson estimate
        if hutchinson:
            k = int(probes) if probes is not None else (1 if training else self.probes)
        if k > 1:
            y = y.repeat(k, 1)
            context = None if context is None else context.repeat(k, 1)
        eps: Tensor | str | None = None
        if hutchinson:
            if self.probe == "rademacher":
                eps = torch.randint(0, 2, y.shape, device=y.device).to(y.dtype) * 2 - 1
            else:
                eps = torch.randn_like(y)
        elif logdet:
            eps = "exact"
        what = "the sampler (noise to data)" if inverse else "the likelihood (data to noise)"
        dynamics = _Dynamics(self, context, eps, training, solver, what)
        t = torch.tensor([0.0, 1.0] if inverse else [1.0, 0.0], dtype=y.dtype, device=y.device)
        state = (y, y.new_zeros(y.shape[0]))
        options = None if solver.adaptive else {"step_size": 1.0 / solver.steps}
        try:
            ys, acc = odeint(
                dynamics,
                state,
                t,
                rtol=solver.rtol,
                atol=solver.atol,
                method=solver.method,
                options=options,
            )
        except AssertionError as err:  # torchdiffeq's step-size underflow
            if "underflow" not in str(err):
                raise
            raise SolverBudgetExceeded(
                f"the {solver.describe()} solve of {what} cannot meet its tolerance (the step "
                f"size underflowed after {dynamics.nfe} function evaluations); loosen rtol/atol "
                "or use a fixed-step method"
            ) from err
        self.last_nfe = dynamics.nfe
        out = ys[-1][:batch].reshape(x.shape)
        total = acc[-1]
        if k > 1:
            per_probe = total.view(k, batch)
            return Solved(out, per_probe.mean(0), per_probe.var(0) / k, dynamics.nfe)
        return Solved(out, total, None, dynamics.nfe)

    def divergence(
        self, t: Tensor, x: Tensor, context: Tensor | None, eps, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        """(v(t, x | c), div v): the exact trace (``eps="exact"``) or e^T (dv/dx) e for the
        probe ``eps``; the graph to the parameters is kept with ``create_graph``."""
        if isinstance(eps, str):
            return self._exact(t, x, context, create_graph)
        with torch.enable_grad():
            if not (create_graph and x.requires_grad):
                x = x.detach().requires_grad_(True)
            v = self.velocity(t, x, context)
            (vjp,) = torch.autograd.grad(v, x, eps, create_graph=create_graph)
            div = (vjp * eps).sum(-1)
        if not create_graph:
            v, div = v.detach(), div.detach()
        return v, div

    def _exact(self, t, x, context, create_graph: bool) -> tuple[Tensor, Tensor]:
        from torch.func import jacrev, vmap

        def one(xi, ci):
            v = self.velocity(t, xi.unsqueeze(0), None if ci is None else ci.unsqueeze(0))
            v = v.squeeze(0)
            return v, v

        with torch.set_grad_enabled(create_graph):
            jac, v = vmap(jacrev(one, has_aux=True), in_dims=(0, None if context is None else 0))(
                x, context
            )
        return v, jac.diagonal(dim1=-2, dim2=-1).sum(-1)


def check_divergence(divergence, probe, probes) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"model.divergence must be one of auto, {', '.join(DIVERGENCES)}, got {divergence!r}"
        )
    if probe not in PROBES:
        raise ValueError(f"model.probe must be one of {', '.join(PROBES)}, got {probe!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"model.probes must be a positive integer, got {probes!r}")
