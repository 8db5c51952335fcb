"""Numeric helpers every layer below the models shares (bijections, distributions, models).

It imports nothing from genflow, so anything may import it.
"""

from __future__ import annotations

import torch
from torch import Tensor

HALF_TYPES = (torch.float16, torch.bfloat16)


def full_precision(x: Tensor) -> Tensor:
    """fp16/bf16 (network outputs under autocast) -> fp32; fp32 and fp64 stay as they are.

    Log-dets, base log-probs and likelihoods are reduced in at least fp32 under
    ``trainer.precision=bf16|fp16``, so mixed precision rounds the networks, not the bound.
    """
    return x.float() if x.dtype in HALF_TYPES else x


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum all dimensions but the first, in at least fp32: per-example log-det contributions."""
    return full_precision(x).reshape(x.shape[0], -1).sum(dim=1)
