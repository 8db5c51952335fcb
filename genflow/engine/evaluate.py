"""The evaluation protocol: per-example metrics summed over a whole split, divided by N."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genflow.data.batches import in_order
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
    model: GenerativeModel, data: Tensor, batch_size: int, seed: int = 0, progress: bool = False
) -> dict[str, float]:
    """Mean of each per-example metric over ``data``.

    ``progress`` shows a bar over examples (long importance-weighted evaluations).
    Runs under a forked RNG seeded with ``seed``, so the dequantization noise is the same at
    every evaluation (fair model selection) and the training RNG stream is untouched.
    """
    was_training = model.training
    model.eval()
    totals: dict[str, Tensor] = {}
    bar = tqdm(total=len(data), desc="eval", unit="ex", disable=not progress, dynamic_ncols=True)
    with seeded_rng(seed, data.device):
        for batch in in_order(data, batch_size):
            for name, values in model.evaluate(batch).items():
                totals[name] = totals.get(name, 0.0) + values.double().sum()
            bar.update(len(batch))
    bar.close()
    model.train(was_training)
    return {name: (total / len(data)).item() for name, total in totals.items()}
