"""Masked 2-D convolutions for PixelCNN: each output sees only pixels above and to the left.

References: van den Oord et al., 2016, "Pixel Recurrent Neural Networks", arXiv:1601.06759
(section 3.4, masks A and B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pixelcnn_mask(
    out_channels: int, in_channels: int, kernel_size: int, mask_type: str, color_groups: int = 1
) -> Tensor:
    """1 where an output may look: rows above, the left part of the centre row, and at the
    centre the input channel groups before (mask A) or up to and including (mask B) the
    output's group. Channels are split into ``color_groups`` contiguous blocks (R, G, B)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    c = kernel_size // 2
    mask = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
    mask[:, :, :c, :] = 1
    mask[:, :, c, :c] = 1
    group_out = torch.arange(out_channels) * color_groups // out_channels
    group_in = torch.arange(in_channels) * color_groups // in_channels
    allowed = (
        group_in[None, :] < group_out[:, None]
        if mask_type == "A"
        else group_in[None, :] <= group_out[:, None]
    )
    mask[:, :, c, c] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution with a PixelCNN mask on its kernel.

    ``forward_at(x_padded, i, j)`` computes the output at one pixel from a cached input map
    (already zero-padded by ``kernel_size // 2``), which is all cached sampling needs: the
    mask only reads positions at or before (i, j) in raster order.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str,
        color_groups: int = 1,
    ):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.register_buffer(
            "mask", pixelcnn_mask(out_channels, in_channels, kernel_size, mask_type, color_groups)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def forward_vector(self, v: Tensor) -> Tensor:
        """A 1x1 masked convolution applied to one pixel's channel vector (B, C_in)."""
        return F.linear(v, (self.weight * self.mask)[:, :, 0, 0], self.bias)

    def forward_at(self, x_padded: Tensor, i: int, j: int) -> Tensor:
        k = self.kernel_size[0]
        patch = x_padded[:, :, i : i + k, j : j + k]
        return F.conv2d(patch, self.weight * self.mask, self.bias)[:, :, 0, 0]
