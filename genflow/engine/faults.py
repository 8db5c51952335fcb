"""Diagnosing non-finite training steps: which layer's output, or which gradient, went bad."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _tensors(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for v in vars(value).values() for t in _tensors(v)]
    return []


@torch.no_grad()
def first_nonfinite_output(model: nn.Module, x: Tensor) -> str | None:
    """Re-run ``model(x)`` and name the first module (in execution order) whose output has a
    NaN or inf. Hooks fire as modules finish, so the innermost culprit comes first."""
    found: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module, inputs, output):
        if not found and any(
            t.is_floating_point() and not torch.isfinite(t).all() for t in _tensors(output)
        ):
            found.append(names[module] or type(module).__name__)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def nonfinite_gradients(model: nn.Module) -> list[str]:
    """Names of parameters whose gradient holds a NaN or inf."""
    return [
        name
        for name, p in model.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
