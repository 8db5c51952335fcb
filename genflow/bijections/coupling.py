"""Affine coupling with a binary mask: the masked half conditions an affine map of the rest."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.bijections.base import Bijection
from genflow.numeric import sum_except_batch


class AffineCoupling(Bijection):
    """Data -> noise: y = m * x + (1 - m) * (x * exp(s) + t), with (s, t) = net(m * x).

    ``mask`` has the event shape: 1 marks the entries that stay fixed and condition the rest.
    The log-scale is ``scale * tanh(raw)``, a bounded and learnably widened parameterisation
    that keeps early training stable (the network's last layer starts at zero, so the
    layer starts as the identity). With ``append_mask`` an image conditioner also sees the
    mask as an extra input channel, so it knows which pixels it is predicting. A ``context``
    (a conditional coupling, as in variational dequantization) is concatenated to the
    conditioner's input along dimension 1.
    References: Dinh et al., 2017, arXiv:1605.08803 (section 3.3-3.4).
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module, append_mask: bool = False):
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.conditioner = conditioner
        self.append_mask = append_mask
        if self.has_scale:
            channels = mask.shape[0]
            scale_shape = (channels,) + (1,) * (mask.dim() - 1)
            self.scale = nn.Parameter(torch.ones(scale_shape))

    has_scale = True

    def _condition(self, x_fixed: Tensor, context: Tensor | None = None) -> Tensor:
        parts = [x_fixed]
        if self.append_mask:
            parts.append(
                self.mask[:1].to(x_fixed.dtype).expand(len(x_fixed), 1, *x_fixed.shape[2:])
            )
        if context is not None:
            parts.append(context.to(x_fixed.dtype))
        return self.conditioner(torch.cat(parts, dim=1) if len(parts) > 1 else x_fixed)

    def _shift_and_log_scale(
        self, x_fixed: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        raw_log_scale, shift = self._condition(x_fixed, context).chunk(2, dim=1)
        free = 1.0 - self.mask
        return shift * free, self.scale * torch.tanh(raw_log_scale) * free

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(x * self.mask, context)
        y = x * torch.exp(log_scale) + shift
        return y, sum_except_batch(log_scale)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(y * self.mask, context)
        x = (y - shift) * torch.exp(-log_scale)
        return x, -sum_except_batch(log_scale)


class AdditiveCoupling(AffineCoupling):
    """Data -> noise: y = m * x + (1 - m) * (x + t(m * x)); volume preserving (log-det 0).

    The conditioner outputs only the shift (as many values as the input).
    References: Dinh et al., 2014, "NICE", arXiv:1410.8516 (section 3.2).
    """

    has_scale = False

    def _shift_and_log_scale(
        self, x_fixed: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        shift = self._condition(x_fixed, context) * (1.0 - self.mask)
        return shift, torch.zeros_like(shift)


class CheckerboardCoupling(Bijection):
    """Data -> noise on (B, C, H, W) with W even: RealNVP's checkerboard coupling, with the
    conditioner run on the fixed half's pixels only.

    Each row's pixels pair up as (2k, 2k + 1); the fixed one of a pair is the one where
    (i + j + parity) is even, as in ``checkerboard_mask``. The two halves are gathered into
    (B, C, H, W/2) images, so the conditioner does half the work of a masked coupling, whose
    network runs on every pixel of a half-zeroed image. The conditioner also sees a channel
    that is 1 on the rows whose fixed pixel is the left one of its pair, since the gathered
    layout alone does not tell. The scale is ``scale * tanh(raw)`` per channel, zero-initialised
    nets start as the identity, and a conditioner of (C + 1) -> 2C channels has the parameters
    of the masked coupling's. An image ``context`` of (B, K, H, W) is gathered the same way and
    both of its halves join the conditioner's input (C + 1 + 2K channels).
    """

    def __init__(self, channels: int, conditioner: nn.Module, parity: int = 0):
        super().__init__()
        self.parity = int(parity) % 2
        self.conditioner = conditioner
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def _left_fixed(self, x: Tensor) -> Tensor:
        """(H, 1) bool: rows whose fixed pixel is the left one of each pair (j even)."""
        rows = torch.arange(x.shape[2], device=x.device).view(-1, 1)
        return (rows + self.parity) % 2 == 0

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, c, h, w = x.shape
        if w % 2:
            raise ValueError(f"checkerboard coupling needs an even width, got {w}")
        pairs = x.reshape(b, c, h, w // 2, 2)
        left, right = pairs[..., 0], pairs[..., 1]
        left_fixed = self._left_fixed(x)
        return (
            torch.where(left_fixed, left, right),
            torch.where(left_fixed, right, left),
            left_fixed,
        )

    @staticmethod
    def _join(fixed: Tensor, moved: Tensor, left_fixed: Tensor) -> Tensor:
        left = torch.where(left_fixed, fixed, moved)
        right = torch.where(left_fixed, moved, fixed)
        return torch.stack((left, right), dim=-1).flatten(-2)

    def _shift_and_log_scale(
        self, fixed: Tensor, left_fixed: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        parts = [fixed, left_fixed.to(fixed.dtype).expand(fixed.shape[0], 1, *fixed.shape[2:])]
        if context is not None:
            # an image-shaped context is gathered like the input: both of its halves
            parts += list(self._split(context.to(fixed.dtype))[:2])
        raw_log_scale, shift = self.conditioner(torch.cat(parts, dim=1)).chunk(2, dim=1)
        return shift, self.scale * torch.tanh(raw_log_scale)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        fixed, moved, left_fixed = self._split(x)
        shift, log_scale = self._shift_and_log_scale(fixed, left_fixed, context)
        moved = moved * torch.exp(log_scale) + shift
        return self._join(fixed, moved, left_fixed), sum_except_batch(log_scale)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        fixed, moved, left_fixed = self._split(y)
        shift, log_scale = self._shift_and_log_scale(fixed, left_fixed, context)
        moved = (moved - shift) * torch.exp(-log_scale)
        return self._join(fixed, moved, left_fixed), -sum_except_batch(log_scale)


COUPLING_SCALES = ("sigmoid", "exp", "additive")


class ChannelCoupling(Bijection):
    """Data -> noise on (B, C, ...): one channel half conditions an affine map of the other.

    ``b' = (b + t(a)) * scale(a)`` with ``scale = sigmoid(raw + 2)`` (Glow's choice: bounded,
    starting near the identity), ``exp(soft_clamp(raw))``, or no scale (``additive``). With
    ``condition_on_second`` the second half conditions the first, which is how Glow's
    learned prior on factored-out channels is written as a bijection: with a zero-initialised
    conditioner it starts as the standard normal prior.
    References: Kingma & Dhariwal, 2018, "Glow", arXiv:1807.03039 (section 3.3).
    """

    def __init__(
        self,
        channels: int,
        conditioner: nn.Module,
        scale: str = "sigmoid",
        condition_on_second: bool = False,
    ):
        super().__init__()
        if scale not in COUPLING_SCALES:
            raise ValueError(
                f"unknown coupling scale '{scale}'; valid: {', '.join(COUPLING_SCALES)}"
            )
        self.first = channels // 2
        self.conditioner = conditioner
        self.scale = scale
        self.condition_on_second = condition_on_second

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x[:, : self.first], x[:, self.first :]
        return (b, a) if self.condition_on_second else (a, b)

    def _join(self, fixed: Tensor, moved: Tensor) -> Tensor:
        parts = (moved, fixed) if self.condition_on_second else (fixed, moved)
        return torch.cat(parts, dim=1)

    def _shift_and_log_scale(self, fixed: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.conditioner(fixed)
        if self.scale == "additive":
            return h, None
        shift, raw = h.chunk(2, dim=1)
        if self.scale == "sigmoid":
            return shift, F.logsigmoid(raw + 2.0)
        return shift, 3.0 * torch.tanh(raw / 3.0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        fixed, moved = self._split(x)
        shift, log_scale = self._shift_and_log_scale(fixed)
        moved = moved + shift
        if log_scale is None:
            return self._join(fixed, moved), x.new_zeros(x.shape[0])
        return self._join(fixed, moved * torch.exp(log_scale)), sum_except_batch(log_scale)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        fixed, moved = self._split(y)
        shift, log_scale = self._shift_and_log_scale(fixed)
        if log_scale is None:
            return self._join(fixed, moved - shift), y.new_zeros(y.shape[0])
        moved = moved * torch.exp(-log_scale) - shift
        return self._join(fixed, moved), -sum_except_batch(log_scale)


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
