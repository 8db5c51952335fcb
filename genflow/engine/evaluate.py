"""The evaluation protocol: per-example metrics summed over a whole split, divided by N."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genflow.engine.distributed import DistContext
from genflow.models.base import GenerativeModel


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block on its own RNG stream seeded with ``seed``; the caller's stream (on the CPU,
    and on ``device`` if it is a GPU) is restored after, so training draws are untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def evaluate(
    model: GenerativeModel,
    data: Tensor,
    batch_size: int,
    seed: int = 0,
    progress: bool = False,
    ctx: DistContext | None = None,
    tails: bool = False,
    labels: Tensor | None = None,
) -> dict[str, float]:
    """Mean of each per-example metric over ``data``.

    With ``tails`` the per-example bpd is kept as well, and the result also has its median
    (``bpd_median``), 99th percentile (``bpd_p99``), maximum (``bpd_max``) and the index of
    the worst example in ``data`` (``worst_index``): a mean carried by a few examples shows.

    ``progress`` shows a bar over examples (long importance-weighted evaluations).
    Runs under a forked RNG seeded with ``seed``, so the dequantization noise is the same at
    every evaluation (fair model selection) and the training RNG stream is untouched.
    Under DDP (``ctx``) each rank takes its shard of ``data``; the per-metric sums and the
    example count are all-reduced, so every rank returns the same means over all of ``data``.
    ``labels`` (one per example): a class-conditional model is scored as p(x | y).
    """
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    shard = data[ctx.shard(len(data))]
    shard_labels = None if labels is None else labels[ctx.shard(len(data))]
    totals: dict[str, Tensor] = {}
    per_example: list[Tensor] = []
    bar = tqdm(
        total=len(shard),
        desc="eval",
        unit="ex",
        disable=not progress or not ctx.is_main,
        dynamic_ncols=True,
    )
    with seeded_rng(seed + 7919 * ctx.rank, data.device):
        for start in range(0, len(shard), batch_size):
            batch = shard[start : start + batch_size]
            if shard_labels is None:
                metrics = model.evaluate(batch)
            else:
                metrics = model.evaluate(batch, shard_labels[start : start + batch_size])
            for name, values in metrics.items():
                totals[name] = totals.get(name, 0.0) + values.double().sum()
                if tails and name == "bpd":
                    per_example.append(values.double())
            bar.update(len(batch))
    bar.close()
    model.train(was_training)
    names = sorted(totals)
    sums = torch.stack([totals[k] for k in names])
    sums = ctx.all_reduce(torch.cat([sums, sums.new_tensor([len(shard)])]))
    count = sums[-1]
    means = {name: (total / count).item() for name, total in zip(names, sums, strict=False)}
    for name in [n for n in names if n.endswith("_var")]:
        # a model's per-example variance of a Monte Carlo estimate (CNF's Hutchinson log-det):
        # the standard error of the mean over the split
        means[name[: -len("_var")] + "_se"] = math.sqrt(means[name] / count.item())
    if tails and "bpd" in totals:  # the tail of the per-example bpd, where there is one
        means.update(tail_statistics(per_example, len(data), ctx, data.device))
    return means


def tail_statistics(
    per_example: list[Tensor], n: int, ctx: DistContext, device: torch.device | None = None
) -> dict[str, float]:
    """Median, 99th percentile and maximum of the per-example bpd over all ``n`` examples
    (each rank holds its contiguous shard: placed in a zero vector on ``device``, the data's,
    and all-reduced), and the index of the worst one."""
    values = torch.zeros(n, dtype=torch.float64, device=device)
    if per_example:
        values[ctx.shard(n)] = torch.cat(per_example)
    values = ctx.all_reduce(values).cpu()
    worst = int(torch.argmax(values))
    return {
        "bpd_median": torch.quantile(values, 0.5).item(),
        "bpd_p99": torch.quantile(values, 0.99).item(),
        "bpd_max": values[worst].item(),
        "worst_index": worst,
    }
