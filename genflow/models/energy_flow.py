"""A flow fitted to an unnormalised 2-D target density exp(-U) by reverse KL.

No data is needed to train: each step pushes N(0, I) draws through the flow and minimises
the variational free energy F = E_q[log q(z) + U(z)] = KL(q || p) - log Z, so -F is a lower
bound on log Z. The dataset (dataset=u1..u4) holds draws from the target only for the
pictures and to set the batch size of each step; ``log Z`` itself is integrated on a grid so
the bound can be read against it.
References: Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows",
arXiv:1505.05770 (section 6.1: planar and radial flows on U1-U4, annealed beta).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from torch import Tensor

from genflow.bijections.autoregressive import MaskedAffineAutoregressive
from genflow.bijections.base import Bijection, Compose, Inverted
from genflow.bijections.permutation import Permutation
from genflow.distributions.energies import ENERGIES, log_partition
from genflow.distributions.normal import StandardNormal
from genflow.engine.files import save_figure
from genflow.models import posteriors
from genflow.models.base import GenerativeModel, Output
from genflow.models.realnvp import vector_flow
from genflow.nn.made import MADE
from genflow.numeric import full_precision

ENERGY_FLOWS = ("planar", "radial", "sylvester", "iaf", "realnvp", "maf")


@functools.cache
def target_log_z(energy: str) -> float:
    return log_partition(ENERGIES[energy])


def build_sampling_flow(
    flow: str, num_flows: int, hidden_features: int, seed: int = 0
) -> tuple[Bijection, bool]:
    """A flow whose ``forward`` maps N(0, I) noise to samples with log|det|, and whether its
    ``inverse`` exists (so samples can be scored: log q at any point)."""
    if flow in ("planar", "radial", "sylvester", "iaf"):
        # the amortised layers of the VAE posteriors, fed one constant context: their
        # parameters are then plain learned parameters
        options = {"variant": "triangular"} if flow == "sylvester" else {}
        if flow == "iaf":
            options = {"hidden_features": hidden_features}
        return getattr(posteriors, flow)(2, 1, num_flows=num_flows, **options), flow == "iaf"
    if flow == "realnvp":  # couplings data -> noise, inverted: one pass each way
        return Inverted(vector_flow(2, num_flows, hidden_features, 2, 0.0)), True
    layers: list[Bijection] = []
    for i in range(num_flows):  # MAF data -> noise, inverted: sampling takes 2 passes a layer
        layers.append(MaskedAffineAutoregressive(MADE(2, hidden_features, 2, 2, seed=seed + i)))
        if i < num_flows - 1:
            layers.append(Permutation.reverse(2))
    return Inverted(Compose(layers)), True


class EnergyFlow(GenerativeModel):
    """q(z) = a flow of N(0, I) fitted to p(z) = exp(-U(z)) / Z, U one of ``ENERGIES``.

    Training minimises F = E_q[log q(z) + beta U(z)] over ``batch`` draws a step, with beta
    rising linearly from 0.01 to 1 over ``anneal_steps`` (0: always 1), as the paper anneals
    to keep the flow from collapsing onto one mode early. Evaluation reports per draw
    ``log_z_bound`` = -(log q(z) + U(z)) (its mean is a lower bound on log Z), ``kl`` =
    log Z + log q(z) + U(z) (its mean is KL(q || p) >= 0) and ``log_z`` (the grid value).
    """

    eval_metrics = ("kl", "log_z_bound", "log_z")

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        energy: str = "u1",
        flow: str = "planar",
        num_flows: int = 32,
        hidden_features: int = 64,
        anneal_steps: int = 0,
    ):
        check_settings(event_shape, levels, energy, flow, anneal_steps)
        super().__init__(event_shape, levels)
        self.energy_name = energy
        self.energy = ENERGIES[energy]
        self.log_z = target_log_z(energy)
        self.flow_name, self.num_flows = flow, int(num_flows)
        self.flow, self.invertible = build_sampling_flow(flow, int(num_flows), hidden_features)
        self.anneal_steps = int(anneal_steps)
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self.base = StandardNormal((2,))

    @staticmethod
    def check_config(model_cfg) -> None:
        check_settings(
            model_cfg.get("event_shape"),
            model_cfg.get("levels"),
            model_cfg.get("energy"),
            model_cfg.get("flow", "planar"),
            model_cfg.get("anneal_steps", 0),
        )

    def set_training_step(self, step: int) -> None:
        self.training_step.fill_(int(step))

    def _context(self) -> Tensor | None:
        """The amortised layers' one constant context; the others take none."""
        if self.flow_name in ("realnvp", "maf"):
            return None
        return self._anchor.new_ones(1, 1).to(self._dtype)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.flow.parameters()).dtype

    def draw(self, n: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """n draws z ~ q and log q(z) (of the temperature-scaled base)."""
        eps = temperature * torch.randn(n, 2, device=self._anchor.device, dtype=self._dtype)
        z, logdet = self.flow(eps, self._context())
        # the base N(0, T^2 I): N(0, I) at eps / T, and the 1 / T^2 of the 2-D rescaling
        base = self.base.log_prob(eps / temperature) - 2 * math.log(temperature)
        return z, base - full_precision(logdet)

    def beta(self) -> Tensor | float:
        """0.01 + step / anneal_steps, at most 1; a tensor, so no step waits on the host."""
        if self.anneal_steps <= 0:
            return 1.0
        return (0.01 + self.training_step.double() / self.anneal_steps).clamp(max=1.0)

    def forward(self, x: Tensor) -> Output:
        z, log_q = self.draw(len(x))
        energy = self.energy(full_precision(z))
        free = log_q + energy
        loss = (log_q + self.beta() * energy).mean()
        metrics = {
            "kl": (free + self.log_z).mean().detach(),
            "log_z_bound": -free.mean().detach(),
        }
        return Output(loss=loss, metrics=metrics)

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        z, log_q = self.draw(len(x))
        free = (log_q + self.energy(full_precision(z))).double()
        return {
            "kl": free + self.log_z,
            "log_z_bound": -free,
            "log_z": torch.full_like(free, self.log_z),
        }

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x): needs the flow's inverse (realnvp, maf, iaf; not planar, radial or
        Sylvester steps, which have none)."""
        if not self.invertible:
            raise ValueError(
                f"a {self.flow_name} flow has no inverse, so q cannot score given points; "
                "its density is shown by the histogram of its samples"
            )
        noise, logdet = self.flow.inverse(x.to(self._dtype), self._context())
        return self.base.log_prob(noise) + full_precision(logdet)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        return self.draw(n, temperature)[0]

    @torch.no_grad()
    def density_picture(self, reference: Tensor, path: Path, draws: int = 200_000) -> Path:
        """The target exp(-U) / Z beside a histogram of ``draws`` samples of q, on [-4, 4]^2,
        with log Z and the bound from those draws in the titles."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from genflow.distributions.energies import grid

        path.parent.mkdir(parents=True, exist_ok=True)
        limit, size = 4.0, 200
        points, area = grid(limit, size)
        target = torch.exp(-self.energy(points) - self.log_z).view(size, size).T
        chunks = [self.draw(min(50_000, draws - i)) for i in range(0, draws, 50_000)]
        z = torch.cat([c[0] for c in chunks]).double().cpu()
        log_q = torch.cat([c[1] for c in chunks]).double().cpu()
        bound = -(log_q + self.energy(z)).mean().item()
        edges = torch.linspace(-limit, limit, size + 1, dtype=torch.float64)
        hist = torch.histogramdd(z, bins=[edges, edges]).hist / (draws * area)
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        extent = (-limit, limit, -limit, limit)
        axes[0].imshow(target.numpy(), extent=extent, origin="lower", cmap="magma")
        axes[0].set_title(f"target {self.energy_name}: log Z = {self.log_z:.3f}")
        axes[1].imshow(hist.T.numpy(), extent=extent, origin="lower", cmap="magma")
        axes[1].set_title(f"{self.flow_name} x {self.num_flows}: bound {bound:.3f}")
        for ax in axes:
            ax.set_aspect("equal")
        fig.tight_layout()
        save_figure(fig, path, dpi=100)
        plt.close(fig)
        return path


def check_settings(event_shape, levels, energy, flow, anneal_steps) -> None:
    if energy not in ENERGIES:
        raise ValueError(
            f"model=energy_flow fits one of the target densities {', '.join(ENERGIES)}; use "
            f"dataset=u1 (..u4), not dataset={energy}"
        )
    if flow not in ENERGY_FLOWS:
        raise ValueError(f"unknown energy flow '{flow}'; valid: {', '.join(ENERGY_FLOWS)}")
    if event_shape is not None and tuple(event_shape) != (2,):
        raise ValueError(f"model=energy_flow is 2-D, got event shape {tuple(event_shape)}")
    if levels is not None:
        raise ValueError("model=energy_flow models a continuous density (dataset.levels null)")
    if not (isinstance(anneal_steps, int) and anneal_steps >= 0):
        raise ValueError(f"model.anneal_steps must be an integer >= 0, got {anneal_steps}")
