"""Activation normalisation with data-dependent initialisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genflow.bijections.base import Bijection


class DataInitialized(nn.Module):
    """A module whose first training batch sets some parameters (``_initialize(x)``), once.

    The ``initialized`` buffer is saved in checkpoints, so resuming never initialises again;
    a Python mirror of it (``_ready``) is what ``_initialize_once`` tests once set, so a
    trained module costs no host sync. Compiled code skips the test altogether (no graph
    break, no recompile when a checkpoint load resets ``_ready``): the training task
    initialises every such module eagerly, before any compiled step.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = False  # the loaded flag decides at the next forward

    def _initialize(self, x: Tensor) -> None:
        raise NotImplementedError

    def _initialize_once(self, x: Tensor) -> None:
        if not self._ready and not torch.compiler.is_compiling():
            if bool(self.initialized):  # one sync, until set
                self._ready = True
            elif self.training:
                with torch.no_grad():
                    self._initialize(x)
                self.initialized.fill_(True)
                self._ready = True


class ActNorm(DataInitialized, Bijection):
    """Data -> noise: y = (x + bias) * exp(log_scale), one (bias, scale) per channel.

    The first training batch sets bias and scale so that each channel has zero mean and
    unit variance, once (:class:`DataInitialized`: not again on resume, not in compiled
    code).
    Works on (B, C, H, W) and (B, D).
    References: Kingma & Dhariwal, 2018, "Glow", arXiv:1807.03039 (section 3.1).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    def _initialize(self, x: Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        self.bias.copy_(-x.mean(dims))
        self.log_scale.copy_(-torch.log(x.std(dims) + 1e-6))

    def _spatial(self, x: Tensor) -> int:
        return x[0, 0].numel()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._initialize_once(x)
        y = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        logdet = self.log_scale.sum() * self._spatial(x)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = y * torch.exp(-self._view(self.log_scale, y)) - self._view(self.bias, y)
        logdet = -self.log_scale.sum() * self._spatial(y)
        return x, logdet.expand(y.shape[0])
