"""Affine coupling with a binary mask: the masked half conditions an affine map of the rest."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genflow.bijections.base import Bijection, sum_except_batch


class AffineCoupling(Bijection):
    """Data -> noise: y = m * x + (1 - m) * (x * exp(s) + t), with (s, t) = net(m * x).

    ``mask`` has the event shape: 1 marks the entries that stay fixed and condition the rest.
    The log-scale is ``scale * tanh(raw)``, a bounded and learnably widened parameterisation
    that keeps early training stable (the network's last layer starts at zero, so the
    layer starts as the identity). With ``append_mask`` an image conditioner also sees the
    mask as an extra input channel, so it knows which pixels it is predicting.
    References: Dinh et al., 2017, arXiv:1605.08803 (section 3.3-3.4).
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module, append_mask: bool = False):
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.conditioner = conditioner
        self.append_mask = append_mask
        channels = mask.shape[0]
        scale_shape = (channels,) + (1,) * (mask.dim() - 1)
        self.scale = nn.Parameter(torch.ones(scale_shape))

    def _shift_and_log_scale(self, x_fixed: Tensor) -> tuple[Tensor, Tensor]:
        h = x_fixed
        if self.append_mask:
            board = self.mask[:1].to(h.dtype).expand(h.shape[0], 1, *h.shape[2:])
            h = torch.cat([h, board], dim=1)
        raw_log_scale, shift = self.conditioner(h).chunk(2, dim=1)
        free = 1.0 - self.mask
        return shift * free, self.scale * torch.tanh(raw_log_scale) * free

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(x * self.mask)
        y = x * torch.exp(log_scale) + shift
        return y, sum_except_batch(log_scale)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(y * self.mask)
        x = (y - shift) * torch.exp(-log_scale)
        return x, -sum_except_batch(log_scale)


def checkerboard_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """1 where (i + j + parity) is even: the spatial checkerboard of RealNVP."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    board = ((i + j + parity) % 2 == 0).float()
    # The mask must be the mask of a single channel when appended as a conditioner input.
    return board.expand(channels, height, width).clone()


def channel_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """1 on the first half of the channels (second half if parity is 1)."""
    mask = torch.zeros(channels, height, width)
    half = channels // 2
    if parity == 0:
        mask[:half] = 1.0
    else:
        mask[half:] = 1.0
    return mask


def alternating_mask(features: int, parity: int = 0) -> Tensor:
    """1 on every other feature: the vector mask of RealNVP's toy experiments."""
    return ((torch.arange(features) + parity) % 2 == 0).float()
