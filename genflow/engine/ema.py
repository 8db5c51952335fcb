"""An exponential moving average of the weights (``trainer.ema=<decay>``).

Built on ``torch.optim.swa_utils.AveragedModel``: parameters are averaged with
``get_ema_multi_avg_fn(decay)``; buffers (ActNorm's ``initialized`` flag, batch-norm running
statistics, integer counters) are copied from the live model, since an average of a flag or
a counter means nothing. Validation, sampling and the test use the averaged weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

PREFIX = "module."


def build_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=False)


@torch.no_grad()
def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """One EMA step (the first copies the weights), then the buffers as they are now."""
    ema.update_parameters(model)
    for averaged, live in zip(ema.module.buffers(), model.buffers(), strict=True):
        averaged.copy_(live)


def averaged_weights(ema_state: dict[str, Any]) -> dict[str, Any]:
    """The model state dict inside an AveragedModel's state dict."""
    return {k[len(PREFIX) :]: v for k, v in ema_state.items() if k.startswith(PREFIX)}


def evaluation_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights to evaluate and sample with: the EMA's when the run kept one."""
    if checkpoint.get("ema") is not None:
        return averaged_weights(checkpoint["ema"])
    return checkpoint["model"]
