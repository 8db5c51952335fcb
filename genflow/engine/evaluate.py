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
    totals: dict[str, Tensor] = {}
    per_example: list[Tensor] = []
    positions: list[Tensor] = []
    part = ctx.shard(len(data))
    bar = tqdm(
        total=part.stop - part.start,
        desc="eval",
        unit="ex",
        disable=not progress or not ctx.is_main,
        dynamic_ncols=True,
    )
    count = 0
    with seeded_rng(seed + 7919 * ctx.rank, data.device):
        for batch, where in _shard_batches(data, part, batch_size):
            if labels is None:
                metrics = model.evaluate(batch)
            else:
                metrics = model.evaluate(batch, labels[where.to(labels.device)])
            for name, values in metrics.items():
                totals[name] = totals.get(name, 0.0) + values.double().sum()
                if tails and name == "bpd":
                    per_example.append(values.double())
                    positions.append(where)
            count += len(batch)
            bar.update(len(batch))
    bar.close()
    model.train(was_training)
    names = sorted(totals)
    sums = torch.stack([totals[k] for k in names]) if names else torch.zeros(0, device=data.device)
    sums = ctx.all_reduce(torch.cat([sums, sums.new_tensor([count])]))
    count = sums[-1]
    means = {name: (total / count).item() for name, total in zip(names, sums, strict=False)}
    for name in [n for n in names if n.endswith("_var")]:
        # a model's per-example variance of a Monte Carlo estimate (CNF's Hutchinson log-det):
        # the standard error of the mean over the split
        means[name[: -len("_var")] + "_se"] = math.sqrt(means[name] / count.item())
    if tails and "bpd" in totals:  # the tail of the per-example bpd, where there is one
        means.update(tail_statistics(per_example, positions, len(data), ctx, data.device))
    if int(count.item()) < len(data):  # a streamed split's unreadable records, left out
        means["skipped_records"] = len(data) - int(count.item())
    return means


def _shard_batches(data, part: slice, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's examples of ``data``, ``batch_size`` at a time, with their positions in
    ``data``: slices of a tensor, or a streamed split read by its worker processes."""
    from genflow.data.stream import StreamSplit

    if isinstance(data, StreamSplit):
        yield from data.batches(range(len(data))[part], batch_size)
        return
    for start in range(part.start, part.stop, batch_size):
        stop = min(start + batch_size, part.stop)
        yield data[start:stop], torch.arange(start, stop, device=data.device)


def tail_statistics(
    per_example: list[Tensor],
    positions: list[Tensor],
    n: int,
    ctx: DistContext,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Median, 99th percentile and maximum of the per-example bpd over the ``n`` examples
    (each rank places its values at their ``positions`` in a zero vector on ``device``, the
    data's, and the vectors are all-reduced; an example no rank scored, an unreadable record
    of a streamed split, is left out), and the index of the worst one."""
    values = torch.zeros(2, n, dtype=torch.float64, device=device)
    if per_example:
        where = torch.cat(positions).to(values.device)
        values[0, where] = torch.cat(per_example).to(values.device)
        values[1, where] = 1.0
    values = ctx.all_reduce(values).cpu()
    scored = values[1] > 0
    kept = values[0][scored]
    worst = int(torch.nonzero(scored).flatten()[int(torch.argmax(kept))])
    return {
        "bpd_median": torch.quantile(kept, 0.5).item(),
        "bpd_p99": torch.quantile(kept, 0.99).item(),
        "bpd_max": values[0, worst].item(),
        "worst_index": worst,
    }
