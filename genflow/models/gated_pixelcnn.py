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

from genflow.models.arm import draw
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

    def __init__(
        self, channels: int, kernel_size: int, groups: int, first: bool, dropout: float = 0.0
    ):
        super().__init__()
        # on the gated horizontal output, before its 1x1 (training only: sampling is in eval)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
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

    def forward(
        self, v: Tensor, h: Tensor, classes: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``classes``: (B, 2C) class vectors added to the vertical and the horizontal
        pre-activations (the paper's conditional gated unit)."""
        v_pre = self.vertical(F.pad(v, self.pad_v))
        if classes is not None:
            v_pre = v_pre + classes[0][:, :, None, None]
        weight = self.horizontal.weight.clone()
        weight[:, :, 0, -1] = weight[:, :, 0, -1] * self.centre_mask
        h_pre = F.conv2d(F.pad(h, self.pad_h), weight, self.horizontal.bias)
        down = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row i gets the vertical row i - 1
        h_pre = h_pre + self.link(down)
        if classes is not None:
            h_pre = h_pre + classes[1][:, :, None, None]
        h_out = F.conv2d(
            self.dropout(gate(h_pre)), self.residual.weight * self.residual_mask[..., None, None]
        )
        h_out = h_out + self.residual.bias[None, :, None, None]
        return gate(v_pre), h_out if self.first else h + h_out


class GatedPixelCNN(PixelARM):
    """``num_layers`` gated layers of ``hidden_channels`` channels (kernel ``kernel_size``;
    the first layer's input is the scaled image), then two masked 1x1 convolutions giving
    ``levels`` logits per pixel and channel (R, G, B order). ``sample`` is cached: the
    vertical stack advances a row at a time, the horizontal stack a pixel at a time. With
    ``num_classes`` a learned class vector joins both stacks' gate inputs in every layer."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        hidden_channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 3,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(event_shape, levels, num_classes, context_features, context_net)
        if kernel_size < 2:
            raise ValueError(f"model.kernel_size must be at least 2, got {kernel_size}")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        c = self.event_shape[0]
        self.embed = MaskedConv2d(c, hidden_channels, 1, "B", c)  # a per-pixel lift, colour-safe
        self.layers = nn.ModuleList(
            GatedLayer(hidden_channels, kernel_size, c, first=i == 0, dropout=dropout)
            for i in range(num_layers)
        )
        self.head_hidden = MaskedConv2d(hidden_channels, hidden_channels, 1, "B", c)
        self.head_out = MaskedConv2d(hidden_channels, c * self.levels, 1, "B", c)
        # per layer: a class vector for the vertical and one for the horizontal gate inputs
        self.classes = self.class_bias([2 * hidden_channels] * (2 * num_layers))

    def _class_pairs(self, y: Tensor | None) -> list:
        """Per layer, the (vertical, horizontal) class vectors, or None (unconditional)."""
        if y is None:
            return [None] * len(self.layers)
        vectors = self.class_vectors(y)
        return list(zip(vectors[0::2], vectors[1::2], strict=True))

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self._logits_of_scaled(self.scale(x), y)

    def _logits_of_scaled(self, inputs: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.embed(inputs)
        v = h
        for layer, classes in zip(self.layers, self._class_pairs(y), strict=True):
            v, h = layer(v, h, classes)
        return self._to_logits(self._head(h))

    # -- cached sampling ------------------------------------------------------------------
    @torch.no_grad()
    def sample_cached(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        """Raster order, carrying each layer's vertical map of the rows above and its
        horizontal values to the left: a new value costs one pixel of each layer (and each
        finished row one row of the vertical stack); the naive sampler's images exactly."""
        c, height, width = self.event_shape
        device, dtype = self.embed.weight.device, self.dtype
        pairs = self._class_pairs(self.condition(n, y, device))
        first = self.layers[0]
        k_rows, k_cols = first.vertical.kernel_size
        half = k_cols // 2
        channels = self.embed.out_channels
        out = torch.zeros(n, c, height, width, dtype=torch.long, device=device)
        pixel = torch.zeros(n, c, device=device, dtype=dtype)  # the scaled values so far
        # vertical inputs of every layer, padded like the training pass: (k_rows - 1) rows on
        # top, half columns each side; row r + k_rows - 1 holds row r
        maps = [
            torch.zeros(
                n, channels, height + k_rows - 1, width + 2 * half, device=device, dtype=dtype
            )
            for _ in range(len(self.layers))
        ]
        # each layer's link into the horizontal stack of the current row: row 0 has no row
        # above, so only the link's bias (the training pass links a zero row)
        links = [
            layer.link.bias[None, :, None].expand(n, -1, width).to(dtype).clone()
            for layer in self.layers
        ]
        for i in range(height):
            if i > 0:
                self._vertical_row(out, i - 1, maps, links, pairs)
            # the horizontal inputs of every layer along this row, half columns of zeros on the left
            rows = [
                torch.zeros(n, channels, width + half, device=device, dtype=dtype)
                for _ in range(len(self.layers) + 1)
            ]
            for j in range(width):
                pixel.zero_()
                for ch in range(c):  # channel ch may read channels < ch of this pixel
                    h = self._horizontal_pixel(pixel, j, rows, links, pairs, store=False)
                    logits = self._to_logits(self._head_vector(h)[:, :, None, None])[:, :, ch, 0, 0]
                    value = draw(logits, temperature)
                    out[:, ch, i, j] = value
                    pixel[:, ch] = self.scale(value)
                self._horizontal_pixel(pixel, j, rows, links, pairs, store=True)
        return out

    def _vertical_row(self, out, r, maps, links, pairs) -> None:
        """Row r (complete) through the vertical stack of every layer: each layer's input map
        gets row r, and ``links`` the row's link into the horizontal stack of row r + 1."""
        k_rows = self.layers[0].vertical.kernel_size[0]
        half = self.layers[0].vertical.kernel_size[1] // 2
        width = self.event_shape[2]
        v = self.embed(self.scale(out[:, :, r]).unsqueeze(2)).squeeze(2)  # 1x1 on the row
        for layer, cache, link, classes in zip(self.layers, maps, links, pairs, strict=True):
            cache[:, :, r + k_rows - 1, half : half + width] = v
            window = cache[:, :, r : r + k_rows]  # rows r - k_rows + 1 .. r, padded
            v_pre = F.conv2d(window, layer.vertical.weight, layer.vertical.bias)[:, :, 0]
            if classes is not None:
                v_pre = v_pre + classes[0][:, :, None]
            link.copy_(layer.link(v_pre.unsqueeze(2)).squeeze(2))
            v = gate(v_pre)

    def _horizontal_pixel(self, pixel, j, rows, links, pairs, store: bool) -> Tensor:
        """The horizontal stack of every layer at column j of the current row, from the values
        to its left in ``rows`` and this pixel's scaled channels; with ``store`` the results
        go into ``rows`` for the pixels to the right."""
        half = self.layers[0].horizontal.kernel_size[1] - 1
        h = self.embed.forward_vector(pixel)
        if store:
            rows[0][:, :, half + j] = h
        for index, (layer, classes) in enumerate(zip(self.layers, pairs, strict=True)):
            weight = layer.horizontal.weight[:, :, 0]  # (2C, C, half + 1)
            left = rows[index][:, :, j : half + j]  # the half values to the left
            pre = torch.einsum("ocw,bcw->bo", weight[:, :, :half], left)
            pre = pre + F.linear(h, weight[:, :, half] * layer.centre_mask, layer.horizontal.bias)
            pre = pre + links[index][:, :, j]
            if classes is not None:
                pre = pre + classes[1]
            new = F.linear(
                gate(pre),
                layer.residual.weight[:, :, 0, 0] * layer.residual_mask,
                layer.residual.bias,
            )
            h = new if layer.first else h + new
            if store:
                rows[index + 1][:, :, half + j] = h
        return h
