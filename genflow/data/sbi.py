"""Simulation-based-inference tasks with exact reference posteriors, simulated here from their
published definitions (no download, no sbibm needed).

A task draws parameters theta from its prior and observations x from its simulator. genflow
learns the posterior p(theta | x) as a conditional density: the *data* are theta, the
*context* is x (neural posterior estimation). Each task also fixes ``num_observations``
observations x_o (theta_o from the prior, seeded) and draws exact samples of p(theta | x_o), so
the trained model's samples can be compared with them by a classifier two-sample test.

- ``gaussian_linear`` (Lueckmann et al., 2021, "Benchmarking Simulation-Based Inference",
  arXiv:2101.04653, task "Gaussian Linear"): theta ~ N(0, 0.1 I_10), x | theta ~
  N(theta, 0.1 I_10); the posterior is N(x / 2, 0.05 I_10).
- ``two_moons`` (Greenberg et al., 2019, arXiv:1905.07488; the benchmark's "Two Moons"):
  theta ~ U[-1, 1]^2, a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2), p = (r cos a + 0.25, r sin a),
  x = p + (-|theta_1 + theta_2| / sqrt 2, (-theta_1 + theta_2) / sqrt 2). The posterior is
  a crescent, bimodal: given x, u = p ~ its own law, and theta solves the shift on one of its
  two branches, each a map of |det| 1 (drawn below by exact rejection).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genflow.errors import GenflowError


class Task:
    theta_dim: int
    x_dim: int

    def prior(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def posterior(self, x_o: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class GaussianLinear(Task):
    theta_dim = x_dim = 10
    prior_var = 0.1
    noise_var = 0.1

    def prior(self, n, rng):
        return rng.normal(0.0, math.sqrt(self.prior_var), size=(n, self.theta_dim))

    def simulate(self, theta, rng):
        return theta + rng.normal(0.0, math.sqrt(self.noise_var), size=theta.shape)

    def posterior(self, x_o, n, rng):
        precision = 1 / self.prior_var + 1 / self.noise_var
        mean = (x_o / self.noise_var) / precision
        return mean + rng.normal(0.0, math.sqrt(1 / precision), size=(n, self.theta_dim))


class TwoMoons(Task):
    theta_dim = x_dim = 2

    def prior(self, n, rng):
        return rng.uniform(-1.0, 1.0, size=(n, 2))

    @staticmethod
    def _crescent(n, rng):
        a = rng.uniform(-math.pi / 2, math.pi / 2, size=n)
        r = rng.normal(0.1, 0.01, size=n)
        return np.stack((r * np.cos(a) + 0.25, r * np.sin(a)), axis=1)

    def simulate(self, theta, rng):
        shift = np.stack(
            (
                -np.abs(theta[:, 0] + theta[:, 1]) / math.sqrt(2),
                (-theta[:, 0] + theta[:, 1]) / math.sqrt(2),
            ),
            axis=1,
        )
        return self._crescent(len(theta), rng) + shift

    def posterior(self, x_o, n, rng):
        kept: list[np.ndarray] = []
        count, tries = 0, 0
        while count < n:
            tries += 1
            if tries > 1000:
                raise GenflowError("the two-moons posterior of this observation has no mass")
            u = self._crescent(4 * n, rng)
            s = x_o[None, :] - u  # the shift theta must produce
            total = -math.sqrt(2) * s[:, 0]  # |theta_1 + theta_2|, needs s_1 <= 0
            branch = np.where(rng.uniform(size=len(u)) < 0.5, 1.0, -1.0)
            plus, minus = branch * total, math.sqrt(2) * s[:, 1]  # t1 + t2, t2 - t1
            theta = np.stack(((plus - minus) / 2, (plus + minus) / 2), axis=1)
            ok = (total >= 0) & (np.abs(theta) <= 1).all(axis=1)
            kept.append(theta[ok])
            count += int(ok.sum())
        return np.concatenate(kept)[:n]


TASKS = {"sbi_gaussian_linear": GaussianLinear, "sbi_two_moons": TwoMoons}


def load_sbi(cfg):
    """Simulated (theta, x) pairs for train / validation / test, theta the data and x the
    context, and the task's reference observations with exact posterior samples."""
    from genflow.data.datasets import DataSplits

    task = TASKS[cfg.name]()
    seed = int(cfg.data_seed)
    splits = {}
    for offset, split in enumerate(("train", "val", "test")):
        rng = np.random.default_rng([seed, offset])
        theta = task.prior(int(cfg[f"n_{split}"]), rng)
        splits[split] = (theta, task.simulate(theta, rng))
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    references = []
    for k in range(int(cfg.num_observations)):
        rng = np.random.default_rng([seed, 1000 + k])
        theta_o = task.prior(1, rng)
        x_o = task.simulate(theta_o, rng)[0]
        samples = task.posterior(x_o, int(cfg.reference_samples), rng)
        references.append((as_tensor(x_o), as_tensor(samples)))
    train_theta, train_x = splits["train"]
    return DataSplits(
        *(as_tensor(splits[k][0]) for k in ("train", "val", "test")),
        standardization=(
            torch.from_numpy(train_theta.mean(0)),
            torch.from_numpy(train_theta.std(0)),
        ),
        context={k: as_tensor(v[1]) for k, v in splits.items()},
        context_standardization=(
            torch.from_numpy(train_x.mean(0)),
            torch.from_numpy(train_x.std(0)),
        ),
        references=references,
    )
