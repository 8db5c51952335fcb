"""Gated PixelCNN: vertical and horizontal stacks with gated units, no blind spot.

References: van den Oord et al., 2016, "Conditional Image Generation with PixelCNN Decoders",
arXiv:1606.05328 (section 2.2: the two stacks, the vertical-to-horizontal link, gated
tanh-sigmoid units, residual connections on the horizontal stack).

The vertical stack at row i reads rows i - k//2 .. i of the layer below (every column within
reach); the horizontal stack at (i, j) reads columns j - k//2 .. j of its own row, and the
vertical stack's output shifted down one row, so it sees the rows above through it and never
row i's later pixels. Stacked, the receptive field grows up and to both sides, with no blind
spot. Colour: channels split into R, G, B groups; the horizontal stack's centre tap and every
1x1 are masked per group (mask A at the first layer, B after), and the gates' two halves
(tanh, sigmoid) are masked per half, so both halves of a unit share its colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.models.pixelcnn import PixelARM
from genflow.nn.masked_conv import MaskedConv2d, pixelcnn_mask


def gate(x: Tensor) -> Tensor:
    """tanh(first half) * sigmoid(second half), along channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def group_mask(out_channels: int, in_channels: int, mask_type: str, groups: int, halves: int):
    """A 1x1 colour mask (out, in) for an output of ``halves`` blocks, each masked as a map
    to out_channels / halves units, so block k of a unit has the unit's colour."""
    mask = pixelcnn_mask(out_channels // halves, in_channels, 1, mask_type, groups)[:, :, 0, 0]
    return mask.repeat(halves, 1)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (the paper's Figure 2)."""

    def __init__(self, channels: int, kernel_size: int, groups: int, first: bool):
        super().__init__()
        k, half = kernel_size, kernel_size // 2
        self.first = first
        self.vertical = nn.Conv2d(channels, 2 * channels, (half + 1, k))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, half + 1))
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.residual = nn.Conv2d(channels, channels, 1)
        self.pad_v = (half, half, half, 0)  # left, right, top, bottom
        self.pad_h = (half, 0, 0, 0)
        # the horizontal centre tap: colour groups, mask A (first layer) or B
        centre = group_mask(2 * channels, channels, "A" if first else "B", groups, 2)
        self.register_buffer("centre_mask", centre)
        self.register_buffer("residual_mask", group_mask(channels, channels, "B", groups, 1))

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        v_pre = self.vertical(F.pad(v, self.pad_v))
        weight = self.horizontal.weight.clone()
        weight[:, :, 0, -1] = weight[:, :, 0, -1] * self.centre_mask
        h_pre = F.conv2d(F.pad(h, self.pad_h), weight, self.horizontal.bias)
        down = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row i gets the vertical row i - 1
        h_pre = h_pre + self.link(down)
        h_out = F.conv2d(gate(h_pre), self.residual.weight * self.residual_mask[..., None, None])
        h_out = h_out + self.residual.bias[None, :, None, None]
        return gate(v_pre), h_out if self.first else h + h_out


class GatedPixelCNN(PixelARM):
    """``num_layers`` gated layers of ``hidden_channels`` channels (kernel ``kernel_size``;
    the first layer's input is the scaled image), then two masked 1x1 convolutions giving
    ``levels`` logits per pixel and channel (R, G, B order). Samples naively (one full pass
    per value)."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        hidden_channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 3,
    ):
        super().__init__(event_shape, levels)
        if len(self.event_shape) != 3:
            raise ValueError(
                f"GatedPixelCNN models images (C, H, W); got event shape {self.event_shape}"
            )
        if kernel_size < 2:
            raise ValueError(f"model.kernel_size must be at least 2, got {kernel_size}")
        c = self.event_shape[0]
        self.embed = MaskedConv2d(c, hidden_channels, 1, "B", c)  # a per-pixel lift, colour-safe
        self.layers = nn.ModuleList(
            GatedLayer(hidden_channels, kernel_size, c, first=i == 0) for i in range(num_layers)
        )
        self.head_hidden = MaskedConv2d(hidden_channels, hidden_channels, 1, "B", c)
        self.head_out = MaskedConv2d(hidden_channels, c * self.levels, 1, "B", c)

    def logits(self, x: Tensor) -> Tensor:
        return self._logits_of_scaled(self.scale(x))

    def _logits_of_scaled(self, inputs: Tensor) -> Tensor:
        h = self.embed(inputs)
        v = h
        for layer in self.layers:
            v, h = layer(v, h)
        return self._to_logits(self.head_out(F.relu(self.head_hidden(F.relu(h)))))
