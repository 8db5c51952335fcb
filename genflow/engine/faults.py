"""Non-finite training steps: the policy (skip, roll back, stop) and the diagnosis (which
layer's output, or which gradient, went bad)."""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def _tensors(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for v in vars(value).values() for t in _tensors(v)]
    return []


@torch.no_grad()
def first_nonfinite_output(model: nn.Module, x: Tensor, y: Tensor | None = None) -> str | None:
    """Re-run ``model(x)`` (``model(x, y)`` with class labels) and name the first module (in execution order) whose output has a
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
        model(x) if y is None else model(x, y)
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


SKIP, ROLL_BACK, STOP = "skip", "rollback", "stop"


class FaultPolicy:
    """What to do about a non-finite training step: skip it; after ``max_bad_steps`` in a row,
    roll back (at most ``max_rollbacks`` times, each cutting the learning rate by
    ``rollback_lr_factor``) or stop, as ``on_bad_steps`` says. Also injects the NaN losses of
    ``trainer.fault_injection`` (once per listed step) so recovery can be tested."""

    def __init__(
        self,
        max_bad_steps: int,
        on_bad_steps: str,
        max_rollbacks: int,
        rollback_lr_factor: float,
        nan_loss_at_steps: frozenset[int] = frozenset(),
    ):
        self.max_bad_steps = max_bad_steps
        self.on_bad_steps = on_bad_steps
        self.max_rollbacks = max_rollbacks
        self.rollback_lr_factor = rollback_lr_factor
        self.nan_loss_at_steps = nan_loss_at_steps
        self._injected: set[int] = set()

    def inject(self, loss: Tensor, step: int) -> Tensor:
        """A NaN loss at each listed step, once (a rolled-back run goes on past it)."""
        if step in self.nan_loss_at_steps and step not in self._injected:
            self._injected.add(step)
            log.warning("fault injection: NaN loss at step %d", step)
            return loss * math.nan
        return loss

    def decide(self, bad_in_a_row: int, rollbacks: int, can_restore: bool) -> str:
        """SKIP, ROLL_BACK or STOP after a non-finite step (``bad_in_a_row`` counts it)."""
        if bad_in_a_row < self.max_bad_steps:
            return SKIP
        if self.on_bad_steps == "rollback" and rollbacks < self.max_rollbacks and can_restore:
            return ROLL_BACK
        return STOP

    def stop_reason(self, rollbacks: int) -> str:
        if self.on_bad_steps == "rollback":
            return f"after {rollbacks} rollbacks"
        return "trainer.on_bad_steps=stop"


def diagnose(model: nn.Module, x: Tensor, loss: Tensor, y: Tensor | None = None) -> str:
    """One clause naming where a non-finite step came from (``y``: the batch's class labels,
    for a class-conditional model)."""
    bad_gradients = nonfinite_gradients(model)
    layer = first_nonfinite_output(model, x, y)
    if layer is not None:
        return f"the first non-finite output came from layer '{layer}'"
    if bad_gradients and bool(torch.isfinite(loss)):
        return f"every layer output was finite; the first non-finite gradient is of '{bad_gradients[0]}'"
    return "every layer output was finite, so the loss itself went non-finite (or a fault was injected)"
