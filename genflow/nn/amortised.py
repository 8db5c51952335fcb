"""Amortised parameters: computed once per example, shared by that example's samples."""

from __future__ import annotations

from torch import Tensor


def per_row(params: Tensor, rows: int) -> Tensor:
    """Amortised parameters computed once per example, repeated for each of its samples.

    A VAE scores k posterior samples per example with the rows example-major (B * k rows);
    the flow parameters depend on the example alone, so they are computed for B contexts and
    repeated here rather than computed B * k times.
    """
    if params.shape[0] == rows:
        return params
    if rows % params.shape[0]:
        raise ValueError(f"{rows} rows cannot share the parameters of {params.shape[0]} contexts")
    return params.repeat_interleave(rows // params.shape[0], dim=0)
