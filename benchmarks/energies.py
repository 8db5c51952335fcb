"""Flows fitted to Rezende & Mohamed's 2-D target energies U1-U4 by reverse KL.

For each target and flow, trains ``genflow.models.energy_flow.EnergyFlow`` in-process with
the settings `genflow train model=energy_flow dataset=uK model.flow=F` composes (Adam 1e-3,
linear warm-up then cosine decay, 5000 steps of 256 draws, beta on U annealed over the first
1000; unlike the trainer's defaults, 5% of the steps warm up (the trainer: 100) and gradient
norms are clipped at 10 (the trainer: 100)), then prints the bound on log Z
from 100,000 draws beside log Z integrated on a grid, and writes one figure: each target
beside each flow's histogram.

    python benchmarks/energies.py                      # planar x 32 and realnvp x 8, 5000 steps
    python benchmarks/energies.py --steps 500 --out /tmp/energies.png
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch

from genflow.distributions.energies import ENERGIES, grid
from genflow.models.energy_flow import EnergyFlow

FLOWS = {"planar": 32, "realnvp": 8}


def train(energy: str, flow: str, layers: int, steps: int, batch: int, seed: int) -> EnergyFlow:
    torch.manual_seed(seed)
    model = EnergyFlow(
        (2,), None, energy, flow, layers, hidden_features=64, anneal_steps=steps // 5
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    warmup = steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * s / steps)),
    )
    dummy = torch.zeros(batch, 2)
    for step in range(steps):
        model.set_training_step(step)
        loss = model(dummy).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/images/energies.png"))
    args = parser.parse_args()
    print(
        f"hardware: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; {args.steps} steps of {args.batch} draws"
    )
    print(f"{'target':7} {'flow':12} {'log Z':>8} {'bound':>8} {'KL':>7} {'seconds':>8}")
    fitted = {}
    for energy in ENERGIES:
        for flow, layers in FLOWS.items():
            start = time.perf_counter()
            model = train(energy, flow, layers, args.steps, args.batch, args.seed)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                bound = model.evaluate(torch.zeros(100_000, 2))["log_z_bound"].mean().item()
            fitted[energy, flow] = model
            print(
                f"{energy:7} {f'{flow} x {layers}':12} {model.log_z:8.4f} {bound:8.4f} "
                f"{model.log_z - bound:7.4f} {seconds:8.1f}"
            )
    draw(fitted, args.out)
    print(f"figure: {args.out}")


@torch.no_grad()
def draw(fitted: dict, path: Path, limit: float = 4.0, size: int = 160) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    energies = list(ENERGIES)
    fig, axes = plt.subplots(len(energies), 1 + len(FLOWS), figsize=(3 * (1 + len(FLOWS)), 12))
    points, area = grid(limit, size)
    edges = torch.linspace(-limit, limit, size + 1, dtype=torch.float64)
    extent = (-limit, limit, -limit, limit)
    for row, energy in enumerate(energies):
        any_model = fitted[energy, next(iter(FLOWS))]
        target = torch.exp(-ENERGIES[energy](points) - any_model.log_z).view(size, size).T
        axes[row, 0].imshow(target.numpy(), extent=extent, origin="lower", cmap="magma")
        axes[row, 0].set_title(f"{energy}: exp(-U) / Z")
        for col, (flow, layers) in enumerate(FLOWS.items(), start=1):
            z = fitted[energy, flow].sample(200_000).double()
            hist = torch.histogramdd(z, bins=[edges, edges]).hist / (len(z) * area)
            axes[row, col].imshow(hist.T.numpy(), extent=extent, origin="lower", cmap="magma")
            axes[row, col].set_title(f"{flow} x {layers}")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
