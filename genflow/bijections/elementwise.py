"""Element-wise affine layers: NICE's diagonal scaling, and MAF's batch normalisation."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genflow.bijections.base import Bijection


class DiagonalScaling(Bijection):
    """Data -> noise: y = x * exp(s), one learned log-scale per dimension.

    The last layer of NICE; without it additive couplings are volume preserving.
    References: Dinh et al., 2014, arXiv:1410.8516 (section 3.3).
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(y.shape[0])


class BatchNormFlow(Bijection):
    """Data -> noise: y = (x - m) / sqrt(v + eps) * exp(gamma) + beta, per feature of (B, D)
    vectors or per channel of (B, C, H, W) images (statistics over batch and positions, the
    log-det counted once per position).

    In training, (m, v) are the batch statistics and running averages are updated; in
    evaluation and in ``inverse`` the running averages are used, so the map is a fixed
    bijection there. References: Papamakarios et al., 2017, arXiv:1705.07057 (section 3.4);
    Dinh et al., 2017, arXiv:1605.08803 (section 3.7).
    """

    def __init__(self, features: int, momentum: float = 0.05, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    @staticmethod
    def _per_feature(t: Tensor, x: Tensor) -> Tensor:
        return t.view(1, -1, *([1] * (x.dim() - 2)))

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and x.shape[0] > 1:
            dims = [0, *range(2, x.dim())]
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
            return mean, var
        return self.running_mean, self.running_var

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self._stats(x)
        scale = torch.rsqrt(var + self.eps) * torch.exp(self.log_gamma)
        y = (x - self._per_feature(mean, x)) * self._per_feature(scale, x)
        y = y + self._per_feature(self.beta, x)
        positions = math.prod(x.shape[2:])
        logdet = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * positions
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        scale = torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps)
        x = (y - self._per_feature(self.beta, y)) * self._per_feature(scale, y)
        x = x + self._per_feature(mean, y)
        positions = math.prod(y.shape[2:])
        logdet = (0.5 * torch.log(var + self.eps) - self.log_gamma).sum() * positions
        return x, logdet.expand(y.shape[0])


class Standardize(Bijection):
    """Data -> noise: y = (x - loc) / scale with fixed ``loc`` and ``scale`` (buffers, stored in
    the checkpoint): a table's standardisation, computed on its training split. Its log-det,
    -sum(log scale), is counted, so a likelihood through it stays in the data's own units.

    It starts as the identity; a state dict written before it existed (a 2-D toy's run) loads
    as the identity too.
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("loc", torch.zeros(shape))
        self.register_buffer("scale", torch.ones(shape))

    def set(self, loc: Tensor, scale: Tensor) -> None:
        if not bool((torch.as_tensor(scale) > 0).all()):
            raise ValueError("a standardisation needs positive scales")
        self.loc.copy_(torch.as_tensor(loc).reshape(self.loc.shape))
        self.scale.copy_(torch.as_tensor(scale).reshape(self.scale.shape))

    def _log_scale(self, x: Tensor) -> Tensor:
        return torch.log(self.scale).sum().expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.loc) / self.scale, -self._log_scale(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y * self.scale + self.loc, self._log_scale(y)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "loc", torch.zeros_like(self.loc))
        state_dict.setdefault(prefix + "scale", torch.ones_like(self.scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
