"""Causal dilated 1-D convolutions for WaveNet-style models.

References: van den Oord et al., 2016, "WaveNet: A Generative Model for Raw Audio",
arXiv:1609.03499 (section 2.1); Paine et al., 2016, "Fast Wavenet Generation Algorithm",
arXiv:1611.09482 (caching).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class CausalConv1d(nn.Conv1d):
    """Output t sees inputs t, t - d, ..., t - (k - 1) d: left padding only.

    ``forward_at(history)`` computes one output from the last ``(k - 1) * d + 1`` inputs, so a
    sampler can keep a short queue per layer instead of re-running the whole sequence.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 2, dilation: int = 1
    ):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.left_padding, 0)))

    @property
    def history(self) -> int:
        """How many past inputs (the current one included) one output needs."""
        return self.left_padding + 1

    def forward_at(self, history: Tensor) -> Tensor:
        """``history``: (B, C, self.history) inputs ending at the current step -> (B, C_out)."""
        return super().forward(history)[:, :, -1]
