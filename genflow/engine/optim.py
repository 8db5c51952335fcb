"""Optimizers (adam, adamw, adamax) and learning-rate schedules (constant, cosine with warm-up)."""

from __future__ import annotations

import math

import torch
from torch import nn

from genflow.errors import GenflowError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}
SCHEDULERS = ("constant", "cosine")


# torch has fused (one kernel for all parameters) steps for these, on these devices
FUSED_OPTIMIZERS = ("adam", "adamw")
FUSED_DEVICES = ("cpu", "cuda")
FUSED_CHOICES = ("auto", True, False)


def use_fused(model: nn.Module, cfg) -> bool:
    """``optimizer.fused``: ``auto`` (the default) steps with torch's fused kernel where it has
    one for this optimizer and the parameters' device (adam and adamw on CPU and CUDA), which
    does the same update as its per-parameter loop at a fraction of the cost for models of many
    small tensors; ``true`` insists on it, ``false`` keeps torch's default step."""
    choice = cfg.get("fused", "auto")
    if choice not in FUSED_CHOICES:
        raise GenflowError(f"optimizer.fused must be auto, true or false, got {choice!r}")
    devices = {p.device.type for p in model.parameters()}
    possible = cfg.name in FUSED_OPTIMIZERS and devices <= set(FUSED_DEVICES)
    if choice is True and not possible:
        where = ", ".join(sorted(devices)) or "no parameters"
        raise GenflowError(
            f"optimizer.fused=true: torch has a fused step for {', '.join(FUSED_OPTIMIZERS)} on "
            f"{' and '.join(FUSED_DEVICES)} parameters, not for {cfg.name} on {where}; use "
            "optimizer.fused=auto"
        )
    return possible and choice is not False


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise GenflowError(
            f"unknown optimizer '{cfg.name}'; valid optimizers: {', '.join(OPTIMIZERS)}"
        )
    if not cfg.lr > 0:
        raise GenflowError(f"optimizer.lr must be positive, got {cfg.lr}")
    options = {"fused": True} if use_fused(model, cfg) else {}
    return OPTIMIZERS[cfg.name](
        model.parameters(),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        **options,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, max_steps: int):
    """Multiplier on the base lr: linear warm-up, then constant or cosine down to ``min_lr_ratio``."""
    name = cfg.name
    if name not in SCHEDULERS:
        raise GenflowError(f"unknown scheduler '{name}'; valid schedulers: {', '.join(SCHEDULERS)}")
    warmup = int(cfg.get("warmup_steps", 0))
    floor = float(cfg.get("min_lr_ratio", 0.0))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
