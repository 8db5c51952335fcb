"""Metric truths: every term of bpd / nll counted, densities that integrate to one."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
import torch
from torch import nn

from genflow.bijections import Compose, Logit
from genflow.engine.distributed import DistContext
from genflow.engine.evaluate import evaluate, tail_statistics
from genflow.models.flow import FlowModel
from genflow.models.maf import MAF
from genflow.models.nice import NICE
from genflow.models.realnvp import RealNVP


class UniformUnitCube(nn.Module):
    """Density 1 on [0, 1)^D: the 'uniform model' once the flow is the identity."""

    def __init__(self, event_shape):
        super().__init__()
        self.event_shape = tuple(event_shape)

    def log_prob(self, z):
        inside = ((z >= 0) & (z < 1)).reshape(len(z), -1).all(dim=1)
        return torch.where(inside, 0.0, -math.inf).to(z.dtype)


def test_uniform_model_on_8bit_data_scores_exactly_8_bpd():
    shape = (1, 4, 4)
    model = FlowModel(Compose([]), shape, levels=256, logit_alpha=None, base=UniformUnitCube(shape))
    data = torch.randint(0, 256, (100, *shape), dtype=torch.uint8)
    metrics = evaluate(model, data, batch_size=32)
    assert abs(metrics["bpd"] - 8.0) < 1e-6  # float32 model: 8.00 to float32 precision
    assert math.isclose(metrics["nll"], 16 * 8 * math.log(2), rel_tol=1e-6)


def test_logit_preprocessing_is_counted_in_log_prob():
    """log p(x) = log N(logit(y)) + log|d logit/dy| - D log(levels), for the same noise."""
    torch.manual_seed(0)
    model = FlowModel(Compose([]), (6,), levels=17, logit_alpha=0.05).double()
    x = torch.randint(0, 17, (5, 6)).double()
    torch.manual_seed(1)
    got = model.log_prob(x)
    torch.manual_seed(1)
    y = (x + torch.rand_like(x)) / 17
    z, logit_logdet = Logit(0.05)(y)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(got, normal + logit_logdet - 6 * math.log(17))


def test_discrete_probabilities_of_a_trained_flow_sum_to_at_most_one():
    """Enumerate all 4^4 images of a 2x2, 4-level flow: sum_x P(x) <= 1, and close once trained.

    P(x) is estimated without bias by averaging exp(log p) over dequantization noise. An
    over-counted log-det would push the sum above one.
    """
    torch.manual_seed(0)
    model = RealNVP((1, 2, 2), levels=4, hidden_channels=16, num_blocks=1, num_scales=2)
    coarse = torch.randint(0, 4, (2000, 1, 1, 1))
    data = (coarse + torch.randint(0, 2, (2000, 1, 2, 2))).clamp(0, 3)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        loss = model(data[torch.randint(0, 2000, (128,))]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model = model.double()
    images = torch.tensor(list(itertools.product(range(4), repeat=4))).view(-1, 1, 2, 2)
    draws = 400
    with torch.no_grad():
        probs = model.log_prob(images.repeat(draws, 1, 1, 1)).exp().view(draws, -1).mean(0)
    total = probs.sum().item()
    assert 0.8 < total <= 1.0 + 0.01


VECTOR_FLOWS = {
    "realnvp": lambda: RealNVP(
        (2,), levels=None, num_layers=4, hidden_features=16, hidden_layers=1
    ),
    "nice": lambda: NICE((2,), levels=None, num_layers=4, hidden_features=16, hidden_layers=1),
    "maf": lambda: MAF((2,), levels=None, num_layers=3, hidden_features=16, batch_norm=True),
}


@pytest.mark.parametrize("name", VECTOR_FLOWS)
def test_two_dimensional_flow_density_integrates_to_one(name):
    torch.manual_seed(0)
    model = VECTOR_FLOWS[name]().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    grid = torch.linspace(-10, 10, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    with torch.no_grad():
        density = model.log_prob(points).exp()
    integral = density.sum() * (grid[1] - grid[0]) ** 2
    assert abs(integral.item() - 1.0) < 5e-3


def test_training_objective_matches_evaluation_metrics():
    """The loss minimised in training mode is the bpd evaluation reports in eval mode (for a
    model without dropout or batch statistics), with the same dequantization noise."""
    torch.manual_seed(0)
    model = RealNVP((1, 4, 4), levels=17, hidden_channels=8, num_blocks=1)
    x = torch.randint(0, 17, (8, 1, 4, 4))
    model.initialize(x)
    with torch.no_grad():
        for p in model.parameters():  # off the identity start
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(3)
    out = model.train()(x)
    torch.manual_seed(3)
    per_example = model.eval().evaluate(x)
    torch.testing.assert_close(out.metrics["nll"], per_example["nll"].mean())
    torch.testing.assert_close(out.loss.detach(), per_example["bpd"].mean())


def test_tail_statistics_name_the_worst_example():
    """bpd_median, bpd_p99, bpd_max and worst_index against numpy on per-example bpd
    computed by hand: an identity flow on continuous data scores x by the standard normal."""
    torch.manual_seed(0)
    model = FlowModel(Compose([]), (2,), levels=None).double()
    data = torch.randn(301, 2, dtype=torch.float64)
    data[137] = torch.tensor([30.0, -4.0], dtype=torch.float64)  # far out: the worst
    nll = 0.5 * (data**2).sum(1).numpy() + math.log(2 * math.pi)  # D/2 log 2 pi with D = 2
    bpd = nll / (2 * math.log(2))
    metrics = evaluate(model, data, batch_size=64, tails=True)
    assert metrics["worst_index"] == 137
    assert math.isclose(metrics["bpd_max"], bpd[137], rel_tol=1e-12)
    assert math.isclose(metrics["bpd_median"], float(np.median(bpd)), rel_tol=1e-12)
    assert math.isclose(metrics["bpd_p99"], float(np.percentile(bpd, 99)), rel_tol=1e-12)
    assert math.isclose(metrics["bpd"], float(bpd.mean()), rel_tol=1e-12)
    assert "worst_index" not in evaluate(model, data, batch_size=64)  # only when asked


def test_tail_statistics_of_shards_equal_those_of_the_whole_split():
    """Each DDP rank holds its contiguous shard of the per-example bpd: two ranks (threads
    with a summing all-reduce) agree with one process on every tail statistic."""
    values = torch.rand(101, dtype=torch.float64)
    values[77] = 50.0
    at = torch.arange(len(values))
    whole = tail_statistics(
        [values[:40], values[40:]], [at[:40], at[40:]], len(values), DistContext()
    )
    shared: list[torch.Tensor] = []
    barrier = threading.Barrier(2)

    class ThreadRank(DistContext):
        def all_reduce(self, tensor, op=None):
            shared.append(tensor.clone())
            barrier.wait()
            tensor.copy_(sum(shared))
            barrier.wait()
            return tensor

    results: dict[int, dict] = {}

    def rank(r: int) -> None:
        ctx = ThreadRank(rank=r, world_size=2)
        shard, where = values[ctx.shard(len(values))], at[ctx.shard(len(values))]
        results[r] = tail_statistics(
            [shard[:10], shard[10:]], [where[:10], where[10:]], len(values), ctx
        )

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == whole and results[1] == whole and whole["worst_index"] == 77


@pytest.mark.parametrize("alpha", [0.2, 0.05])
def test_data_box_mass_is_the_normal_mass_of_the_logit_box(alpha):
    """An identity flow with a logit of ``alpha``: the data box [0, 1)^D is the box
    [logit(alpha), logit(1 - alpha)]^D in flow space, whose standard normal mass is
    (Phi(b) - Phi(-b))^D with b = logit(1 - alpha)."""
    torch.manual_seed(0)
    model = FlowModel(Compose([]), (2,), levels=4, logit_alpha=alpha)
    b = math.log((1 - alpha) / alpha)
    expected = math.erf(b / math.sqrt(2)) ** 2
    got = model.data_box_mass(200_000, batch_size=50_000)
    assert abs(got - expected) < 4e-3  # binomial sd at 200k samples is at most 1.2e-3
