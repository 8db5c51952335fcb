"""The 2-D target energies of Rezende & Mohamed (2015, Table 1): p(z) = exp(-U(z)) / Z.

U2, U3 and U4 do not confine z1 (their density is constant in z1 far out, so Z would be
infinite); as in the paper's figures they are taken on the box |z1| <= 4, with a steep
quadratic wall beyond it, (|z1| - 4)_+^2 / (2 * 0.1^2), so exp(-U) is integrable and equal to
the paper's inside the box. Z is integrated on a grid (``log_partition``).
References: Rezende & Mohamed, 2015, "Variational Inference with Normalizing Flows",
arXiv:1505.05770 (section 6.1, Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

WALL = 0.1  # the width of the z1 wall of U2-U4, outside |z1| <= 4


def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _w3(z: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def _wall(z: Tensor) -> Tensor:
    return 0.5 * ((z[:, 0].abs() - 4).clamp(min=0) / WALL) ** 2


def _two_bumps(a: Tensor, b: Tensor) -> Tensor:
    """-log(exp(-a^2 / 2) + exp(-b^2 / 2)), stably."""
    return -torch.logaddexp(-0.5 * a**2, -0.5 * b**2)


def u1(z: Tensor) -> Tensor:
    ring = 0.5 * ((z.norm(dim=1) - 2) / 0.4) ** 2
    return ring + _two_bumps((z[:, 0] - 2) / 0.6, (z[:, 0] + 2) / 0.6)


def u2(z: Tensor) -> Tensor:
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2 + _wall(z)


def u3(z: Tensor) -> Tensor:
    a = (z[:, 1] - _w1(z)) / 0.35
    b = (z[:, 1] - _w1(z) + _w2(z)) / 0.35
    return _two_bumps(a, b) + _wall(z)


def u4(z: Tensor) -> Tensor:
    a = (z[:, 1] - _w1(z)) / 0.4
    b = (z[:, 1] - _w1(z) + _w3(z)) / 0.35
    return _two_bumps(a, b) + _wall(z)


ENERGIES: dict[str, Callable[[Tensor], Tensor]] = {"u1": u1, "u2": u2, "u3": u3, "u4": u4}
GRID_LIMIT, GRID_SIZE = 6.0, 1200  # the box and resolution Z is integrated on


def grid(limit: float = GRID_LIMIT, size: int = GRID_SIZE) -> tuple[Tensor, float]:
    """Cell centres of a size x size grid on [-limit, limit]^2 (float64), and the cell area."""
    step = 2 * limit / size
    axis = -limit + step * (torch.arange(size, dtype=torch.float64) + 0.5)
    return torch.cartesian_prod(axis, axis), step**2


def log_partition(
    energy: Callable[[Tensor], Tensor], limit: float = GRID_LIMIT, size: int = GRID_SIZE
) -> float:
    """log Z = log of the integral of exp(-U) over [-limit, limit]^2 (midpoint rule)."""
    points, area = grid(limit, size)
    with torch.no_grad():
        return (torch.logsumexp(-energy(points), 0) + math.log(area)).item()


def sample_from_grid(
    energy: Callable[[Tensor], Tensor],
    n: int,
    rng: np.random.Generator,
    limit: float = GRID_LIMIT,
    size: int = GRID_SIZE,
) -> np.ndarray:
    """n draws from exp(-U) / Z: a grid cell by its mass, then a uniform point in the cell
    (exact up to the density's variation within a cell, 0.01 wide)."""
    points, area = grid(limit, size)
    with torch.no_grad():
        log_mass = -energy(points)
    probs = torch.softmax(log_mass, 0).numpy()
    cells = rng.choice(len(probs), size=n, p=probs / probs.sum())
    jitter = (rng.random((n, 2)) - 0.5) * math.sqrt(area)
    return points.numpy()[cells] + jitter
