"""PixelCNN: masked convolutions with a softmax over levels per pixel and colour channel.

References: van den Oord et al., 2016, "Pixel Recurrent Neural Networks", arXiv:1601.06759
(masks A/B, residual blocks); Ramachandran et al., 2017, "Fast Generation for Convolutional
Autoregressive Models", arXiv:1704.06001 (cached generation).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.models.arm import AutoregressiveModel, draw
from genflow.nn.masked_conv import MaskedConv2d


class MaskedResidualBlock(nn.Module):
    """h + 1x1(relu(kxk_B(relu(1x1(relu(h)))))), all masked for the colour order."""

    def __init__(self, channels: int, kernel_size: int, color_groups: int):
        super().__init__()
        half = channels // 2
        self.reduce = MaskedConv2d(channels, half, 1, "B", color_groups)
        self.conv = MaskedConv2d(half, half, kernel_size, "B", color_groups)
        self.expand = MaskedConv2d(half, channels, 1, "B", color_groups)

    def forward(self, h: Tensor) -> Tensor:
        t = self.conv(F.relu(self.reduce(F.relu(h))))
        return h + self.expand(F.relu(t))


class PixelARM(AutoregressiveModel):
    """An image ARM over (C, H, W) in raster order, then R, G, B within a pixel, with
    ``levels`` logits per pixel and channel from a head (``head_hidden``, ``head_out``: masked
    1x1 convolutions to C * levels channels); subclasses give ``sample_cached``."""

    image_only = True

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
    ):
        super().__init__(event_shape, levels, num_classes, context_features, context_net)
        if len(self.event_shape) != 3:
            raise ValueError(
                f"{type(self).__name__} models images (C, H, W); got event shape "
                f"{self.event_shape} (try model=wavenet)"
            )

    def positions(self):
        c, h, w = self.event_shape
        return ((ch, i, j) for i, j, ch in itertools.product(range(h), range(w), range(c)))

    def _to_logits(self, out: Tensor) -> Tensor:
        b, _, *spatial = out.shape
        c = self.event_shape[0]
        return out.view(b, c, self.levels, *spatial).transpose(1, 2)

    def _head(self, h: Tensor) -> Tensor:
        return self.head_out(F.relu(self.head_hidden(F.relu(h))))

    def _head_vector(self, h: Tensor) -> Tensor:
        """The head on one pixel's channel vector (B, C): what cached samplers call."""
        return self.head_out.forward_vector(F.relu(self.head_hidden.forward_vector(F.relu(h))))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        return self.sample_cached(n, temperature, y)

    def sample_cached(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class PixelCNN(PixelARM):
    """A mask-A ``first_kernel_size`` convolution, ``num_layers`` masked residual blocks and a
    1x1 head giving ``levels`` logits per pixel and channel (channels in R, G, B order).

    ``sample`` is cached: every layer keeps its input map, and each new pixel computes each
    layer at that pixel only, since a masked kernel reads nothing after it in raster order.
    With ``num_classes`` a learned class vector joins the hidden map after the first
    convolution and before every block.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        hidden_channels: int = 64,
        num_layers: int = 6,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
    ):
        super().__init__(event_shape, levels, num_classes, context_features, context_net)
        c = self.event_shape[0]
        self.input = MaskedConv2d(c, hidden_channels, first_kernel_size, "A", c)
        self.blocks = nn.ModuleList(
            MaskedResidualBlock(hidden_channels, kernel_size, c) for _ in range(num_layers)
        )
        self.head_hidden = MaskedConv2d(hidden_channels, hidden_channels, 1, "B", c)
        self.head_out = MaskedConv2d(hidden_channels, c * self.levels, 1, "B", c)
        # one class vector after the first convolution and one before each block
        self.classes = self.class_bias([hidden_channels] * (num_layers + 1))

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        bias = self.class_vectors(y)
        h = self.input(self.scale(x))
        if bias[0] is not None:
            h = h + bias[0][:, :, None, None]
        for block, b in zip(self.blocks, bias[1:], strict=True):
            h = block(h if b is None else h + b[:, :, None, None])
        return self._to_logits(self._head(h))

    @torch.no_grad()
    def sample_cached(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        c, height, width = self.event_shape
        device = self.input.weight.device
        bias = self.class_vectors(self.condition(n, y, device))
        p0 = self.input.kernel_size[0] // 2
        pk = self.blocks[0].conv.kernel_size[0] // 2 if len(self.blocks) else 0
        # padded input maps: the scaled image, and each block's kxk input
        image = torch.zeros(n, c, height + 2 * p0, width + 2 * p0, device=device, dtype=self.dtype)
        maps = [
            torch.zeros(
                n,
                b.conv.in_channels,
                height + 2 * pk,
                width + 2 * pk,
                device=device,
                dtype=self.dtype,
            )
            for b in self.blocks
        ]
        out = torch.zeros(n, c, height, width, dtype=torch.long, device=device)
        for i in range(height):
            for j in range(width):
                for ch in range(c):  # channel ch may read channels < ch of this pixel
                    h = self.input.forward_at(image, i, j)
                    if bias[0] is not None:
                        h = h + bias[0]
                    for block, cache, b in zip(self.blocks, maps, bias[1:], strict=True):
                        if b is not None:
                            h = h + b
                        t = F.relu(block.reduce.forward_vector(F.relu(h)))
                        cache[:, :, i + pk, j + pk] = t
                        t = block.conv.forward_at(cache, i, j)
                        h = h + block.expand.forward_vector(F.relu(t))
                    logits = self._head_vector(h).view(n, c, self.levels)[:, ch]
                    value = draw(logits, temperature)
                    out[:, ch, i, j] = value
                    image[:, ch, i + p0, j + p0] = self.scale(value)
        return out
