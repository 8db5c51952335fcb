"""2-D toy densities for flows, generated from a seed (no files, no downloads)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.datasets import make_circles, make_moons


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    x, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - np.array([0.5, 0.25])) * 2.0


def _circles(n: int, rng: np.random.Generator) -> np.ndarray:
    x, _ = make_circles(n, noise=0.04, factor=0.5, random_state=int(rng.integers(2**31)))
    return x * 3.0


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = 2 * math.pi * rng.integers(0, 8, n) / 8
    centers = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 2.0
    return centers + 0.2 * rng.standard_normal((n, 2))


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0
    x2 = x2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2.0


def _pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    num_arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    arms = rng.integers(0, num_arms, n)
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = 2 * math.pi * arms / num_arms + rate * np.exp(features[:, 0])
    rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], axis=1)
    return 2.0 * np.einsum("ti,tij->tj", features, rotations.reshape(-1, 2, 2))


def _two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.sqrt(rng.random(n)) * 540 * (2 * math.pi) / 360
    d1 = np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
    return (d1 * sign + 0.5 * rng.standard_normal((n, 2))) / 3.0


def _energy(name: str):
    """Draws from one of Rezende & Mohamed's 2-D targets exp(-U) / Z (via a fine grid)."""

    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        from genflow.distributions.energies import ENERGIES, sample_from_grid

        return sample_from_grid(ENERGIES[name], n, rng, size=600)

    return draw


TOYS = {
    "moons": _moons,
    "circles": _circles,
    "eight_gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "two_spirals": _two_spirals,
    **{name: _energy(name) for name in ("u1", "u2", "u3", "u4")},
}


def make_toy(name: str, n: int, seed: int) -> np.ndarray:
    """``n`` float32 points of the named toy, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return TOYS[name](n, rng).astype(np.float32)
