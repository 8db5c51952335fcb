"""Continuous normalizing flows, trained by flow matching or by maximum likelihood (FFJORD).

The model is genflow's flow contract with an ODE as its bijection (genflow/bijections/ode.py):
data -> (dequantize, scale to [0, 1), logit; or a table's standardisation) -> ODE from t = 1
to t = 0 -> N(0, I), every term of the map counted, so the nll and bpd are those of the data
as the dataset gives it and sit beside RealNVP's and Glow's in ``genflow report``.

Objectives (``objective``):

- ``flow_matching`` (Lipman et al. 2023, arXiv:2210.02747): regress the velocity on the
  conditional path from a noise draw x0 to a (dequantized, preprocessed) data point x1,
  E_{t, x0, x1} |v(t, x_t) - u_t|^2, with t ~ U[0, 1]. ``path=ot``: the conditional optimal
  transport path x_t = (1 - (1 - sigma_min) t) x0 + t x1, u_t = x1 - (1 - sigma_min) x0
  (Lipman et al.; Tong et al. 2023, arXiv:2302.00482, with x0 and x1 paired at random);
  ``path=vp``: the variance-preserving cosine path x_t = cos(pi t / 2) x0 + sin(pi t / 2) x1.
  Training solves no ODE; the likelihood is computed, as for every flow, by solving one.
- ``ffjord`` (Grathwohl et al. 2019, arXiv:1810.01367): maximise log p(x) itself through
  ``train_solver``, with one Hutchinson probe per example (or the exact trace).

A class or a context vector conditions the velocity field (the base stays N(0, I), the
source of every path); the field is an MLP on the flattened event with the time and the
condition in every layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from genflow.bijections.ode import ODEFlow, Solver, check_divergence
from genflow.models.base import (
    GenerativeModel,
    Output,
    check_context_features,
    check_num_classes,
    check_one_condition,
)
from genflow.models.flow import FlowModel
from genflow.nn.context import ContextEmbedding, check_context_net, embedded_width
from genflow.nn.velocity import ACTIVATIONS, VelocityMLP

OBJECTIVES = ("flow_matching", "ffjord")
PATHS = ("ot", "vp")
# "auto" takes the exact trace up to this many values per example, Hutchinson's above
EXACT_UP_TO = 64


def resolve_divergence(divergence: str, num_dims: int) -> str:
    if divergence == "auto":
        return "exact" if num_dims <= EXACT_UP_TO else "hutchinson"
    return divergence


def check_cnf(model_cfg) -> None:
    """One sentence for a setting the constructor would reject (on the composed config)."""
    get = model_cfg.get
    objective = get("objective", "flow_matching")
    if objective not in OBJECTIVES:
        raise ValueError(
            f"model.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}"
        )
    path = get("path", "ot")
    if path not in PATHS:
        raise ValueError(f"model.path must be one of {', '.join(PATHS)}, got {path!r}")
    sigma_min = get("sigma_min", 0.0)
    if (
        isinstance(sigma_min, bool)
        or not isinstance(sigma_min, (int, float))
        or not 0 <= sigma_min < 1
    ):
        raise ValueError(f"model.sigma_min must be in [0, 1), got {sigma_min!r}")
    if path == "vp" and sigma_min:
        raise ValueError(
            "model.sigma_min is the ot path's; the vp path ends at the data (sigma_min=0)"
        )
    divergence = get("divergence", "auto")
    check_divergence(
        "exact" if divergence == "auto" else divergence,
        get("probe", "rademacher"),
        get("probes", 1),
    )
    if get("activation", "silu") not in ACTIVATIONS:
        raise ValueError(
            f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {get('activation')!r}"
        )
    for key in ("solver", "sample_solver", "train_solver"):
        Solver.from_config(get(key), f"model.{key}")
    if objective == "flow_matching" and get("dequantization", "uniform") != "uniform":
        raise ValueError(
            "model.dequantization=variational needs a likelihood objective to train the "
            "dequantizer; flow matching trains none: use model.objective=ffjord or "
            "model.dequantization=uniform"
        )


class CNF(FlowModel):
    """A continuous normalizing flow (see the module docstring)."""

    eval_metrics = ("nll", "bpd", "nfe")

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        logit_alpha: float | None = 1e-6,
        objective: str = "flow_matching",
        path: str = "ot",
        sigma_min: float = 0.0,
        hidden_features: int = 256,
        num_layers: int = 3,
        time_features: int = 16,
        activation: str = "silu",
        divergence: str = "auto",
        probe: str = "rademacher",
        probes: int = 1,
        solver: dict | None = None,
        sample_solver: dict | None = None,
        train_solver: dict | None = None,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
        class_features: int = 16,
        **flow_options: Any,
    ):
        options = dict(
            objective=objective,
            path=path,
            sigma_min=sigma_min,
            divergence=divergence,
            probe=probe,
            probes=probes,
            activation=activation,
            solver=solver,
            sample_solver=sample_solver,
            train_solver=train_solver,
            dequantization=flow_options.get("dequantization", "uniform"),
        )
        check_cnf(options)
        num_classes = check_num_classes(num_classes)
        context_features = check_context_features(context_features)
        check_one_condition(num_classes, context_features)
        event_shape = tuple(int(s) for s in event_shape)
        num_dims = math.prod(event_shape)
        if num_classes is not None:
            width = int(class_features)
        else:
            width = embedded_width(context_features, context_net)
        velocity = VelocityMLP(
            num_dims, hidden_features, num_layers, time_features, width, activation
        )
        flow = ODEFlow(
            velocity,
            event_shape,
            solver,
            sample_solver,
            train_solver,
            resolve_divergence(divergence, num_dims),
            probe,
            probes,
        )
        # the condition goes to the velocity field, not to the base (the paths' source)
        super().__init__(flow, event_shape, levels, logit_alpha, **flow_options)
        self.num_classes = num_classes
        self.context_features = context_features
        if num_classes is not None:
            self.class_embedding = nn.Embedding(num_classes, width)
        if context_features is not None:
            self.context_embedding = ContextEmbedding(
                context_features, **check_context_net(context_net)
            )
        self.objective = objective
        self.path = path
        self.sigma_min = float(sigma_min)

    @staticmethod
    def check_config(model_cfg) -> None:
        GenerativeModel.check_config(model_cfg)
        check_cnf(model_cfg)

    def _conditioning(self, n, y, device, check_range: bool = True):
        """(None, None, the velocity field's condition): the base is N(0, I) always."""
        y = self.condition(n, y, device, check_range)
        if y is None:
            return None, None, None
        if self.num_classes is not None:
            return None, None, self.class_embedding(y)
        return None, None, self.context_embedding(y)

    def conditional_path(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, u_t): the point at time t (B,) on the path from x0 to x1, and its velocity."""
        t = t.unsqueeze(-1)
        if self.path == "ot":
            s = 1.0 - self.sigma_min
            return (1.0 - s * t) * x0 + t * x1, x1 - s * x0
        half = 0.5 * math.pi
        a, b = torch.sin(half * t), torch.cos(half * t)
        return b * x0 + a * x1, half * (b * x1 - a * x0)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        if self.objective == "ffjord":
            return super().forward(x, y)
        _, _, context = self._conditioning(len(x), y, x.device, check_range=False)
        x1, _ = self.preprocess(x)
        x1 = x1.reshape(len(x1), -1)
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1), dtype=x1.dtype, device=x1.device)
        xt, ut = self.conditional_path(x0, x1, t)
        loss = (self.flow.velocity(t, xt, context) - ut).pow(2).mean()
        return Output(loss=loss, metrics={"fm_loss": loss.detach()})

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """nll and bpd through the likelihood solver, the solve's NFE, and where the divergence
        is Hutchinson's with several probes, the variance of each example's estimate
        (``nll_var``; the engine reports the standard error of the mean, ``nll_se``)."""
        _, _, context = self._conditioning(len(x), y, x.device, check_range=False)
        u, pre_logdet = self.preprocess(x)
        solved = self.flow.transform(u, context)
        nll = -(self.base.log_prob(solved.out) + pre_logdet + solved.logdet)
        out = {
            "nll": nll,
            "bpd": self.bpd(nll),
            "nfe": torch.full_like(nll, float(solved.nfe)),
        }
        if solved.logdet_var is not None:
            out["nll_var"] = solved.logdet_var
            out["bpd_var"] = solved.logdet_var / (self.num_dims * math.log(2)) ** 2
        return out

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Data -> the ODE's latent at t = 0 through ``sample_solver`` (bin centres, no log-det
        solved): the latent that ``decode`` maps back."""
        y, _ = self.preprocess(x, noise=False)
        return self.flow.transform(y, logdet=False, solver=self.flow.sample_solver).out

    @torch.no_grad()
    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Latent -> data through ``sample_solver`` (no log-det solved)."""
        y = self.flow.transform(z, context, inverse=True, logdet=False).out
        return self.postprocess(y)

    def override_solver(self, which: str, overrides, key: str) -> Solver:
        """Replace ``which`` (``solver``, ``sample_solver``) by itself with the non-null values
        of ``overrides`` (a mapping; ``key`` names it in the sentence for a bad value)."""
        changes = {k: v for k, v in dict(overrides or {}).items() if v is not None}
        # from_config names an unknown key and checks every value, as for model.solver
        solver = Solver.from_config({**asdict(getattr(self.flow, which)), **changes}, key)
        setattr(self.flow, which, solver)
        return solver

    def evaluation_settings(self) -> dict[str, Any]:
        """What an evaluation summary records of how the likelihood was solved."""
        kind = self.flow.divergence_kind
        if kind == "hutchinson":
            kind = f"hutchinson ({self.flow.probe}, {self.flow.probes} per example)"
        return {"solver": self.flow.solver.describe(), "divergence": kind}

    @torch.no_grad()
    def initialize(self, batch: Tensor, y: Tensor | None = None) -> None:
        """Nothing depends on the data at the start (no ActNorm)."""
