"""PixelCNN++'s shifted convolutions: outputs see only rows above (down-shifted) or rows
above and pixels to the left (down-right-shifted), with no blind spot.

References: Salimans et al., 2017, "PixelCNN++", arXiv:1701.05517; van den Oord et al.,
2016, "Conditional Image Generation with PixelCNN Decoders", arXiv:1606.05328.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def down_shift(x: Tensor) -> Tensor:
    """Move every row down by one (a zero row on top)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: Tensor) -> Tensor:
    """Move every column right by one (a zero column on the left)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(nn.Conv2d):
    """Kernel (kh, kw) over rows i - kh + 1 .. i, centred in width; stride 2 halves the size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 3), stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        kh, kw = self.kernel_size
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class DownRightShiftedConv2d(nn.Conv2d):
    """Kernel (kh, kw) over rows i - kh + 1 .. i and columns j - kw + 1 .. j."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 2), stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        kh, kw = self.kernel_size
        self.pad = (kw - 1, 0, kh - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class DownShiftedDeconv2d(nn.ConvTranspose2d):
    """Doubles the size; cropped so outputs still see only rows at or above their own."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 3)):
        super().__init__(in_channels, out_channels, kernel_size, stride=2, output_padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        out = super().forward(x)
        return out[:, :, : out.shape[2] - kh + 1, (kw - 1) // 2 : out.shape[3] - (kw - 1) // 2]


class DownRightShiftedDeconv2d(nn.ConvTranspose2d):
    """Doubles the size; cropped so outputs see only rows above and columns to the left."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(2, 2)):
        super().__init__(in_channels, out_channels, kernel_size, stride=2, output_padding=1)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        out = super().forward(x)
        return out[:, :, : out.shape[2] - kh + 1, : out.shape[3] - kw + 1]


# Cached sampling keeps every feature map in a zero-bordered buffer (B, C, H + 1, W + 2): one
# zero row on top and one zero column on each side, the interior at [1:, 1:-1]. Those zeros are
# exactly the padding every shifted convolution above adds, so an output region is one
# unpadded convolution of a buffer slice.
def buffer(n: int, channels: int, height: int, width: int, like: Tensor) -> Tensor:
    """A zero map in the cached samplers' bordered layout."""
    return like.new_zeros(n, channels, height + 1, width + 2)


def interior(buf: Tensor, r0: int, r1: int, c0: int, c1: int) -> Tensor:
    """The view of rows r0..r1-1 and columns c0..c1-1 of a bordered buffer's map."""
    return buf[:, :, 1 + r0 : 1 + r1, 1 + c0 : 1 + c1]


def conv_region(conv: nn.Conv2d, buf: Tensor, r0: int, r1: int, c0: int, c1: int) -> Tensor:
    """Output rows r0..r1-1, columns c0..c1-1 of a shifted convolution (``DownShiftedConv2d``
    or ``DownRightShiftedConv2d``, any stride) of the map held in the bordered ``buf``: the
    values ``conv(map)[:, :, r0:r1, c0:c1]``, reading only the input window they need."""
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    left, right, top, _ = conv.pad
    if max(left, right, top) > 1:
        raise ValueError(
            f"a bordered buffer holds one row and column of padding; {conv} needs more"
        )
    rows = slice(r0 * sh - top + 1, (r1 - 1) * sh + kh - top + 1)
    cols = slice(c0 * sw - left + 1, (c1 - 1) * sw + kw - left + 1)
    return F.conv2d(buf[:, :, rows, cols], conv.weight, conv.bias, stride=conv.stride)


def concat_elu(x: Tensor) -> Tensor:
    """ELU of [x, -x]: both signs of every feature pass (Salimans et al., 2017)."""
    return F.elu(torch.cat([x, -x], dim=1))


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), (a, b) = conv(concat_elu(conv(concat_elu(x)) + nin(concat_elu(aux))))."""

    def __init__(self, channels: int, conv: type, aux_channels: int = 0, dropout: float = 0.0):
        super().__init__()
        self.conv_in = conv(2 * channels, channels)
        self.aux = nn.Conv2d(2 * aux_channels, channels, 1) if aux_channels else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = conv(2 * channels, 2 * channels)

    def forward(
        self, x: Tensor, aux: Tensor | None = None, classes: Tensor | None = None
    ) -> Tensor:
        """``classes``: (B, 2C) class vectors added to the gate's inputs (conditional models)."""
        h = self._aux(self.conv_in(concat_elu(x)), aux)
        return self._gate(x, self.conv_out(self.dropout(concat_elu(h))), classes)

    def forward_region(
        self, x: Tensor, aux: Tensor | None, classes: Tensor | None, cache_in, cache_out, region
    ) -> Tensor:
        """``forward`` at ``region`` (r0, r1, c0, c1) of its output, for cached sampling:
        ``x`` and ``aux`` are the region's values; each convolution's input is written into
        its bordered buffer (``cache_in``, ``cache_out``) and read back from there, with the
        rows above and the columns around the region that earlier regions wrote."""
        interior(cache_in, *region).copy_(concat_elu(x))
        h = self._aux(conv_region(self.conv_in, cache_in, *region), aux)
        interior(cache_out, *region).copy_(self.dropout(concat_elu(h)))
        return self._gate(x, conv_region(self.conv_out, cache_out, *region), classes)

    def _aux(self, h: Tensor, aux: Tensor | None) -> Tensor:
        return h if self.aux is None else h + self.aux(concat_elu(aux))

    @staticmethod
    def _gate(x: Tensor, pre: Tensor, classes: Tensor | None) -> Tensor:
        if classes is not None:
            pre = pre + classes[:, :, None, None]
        a, b = pre.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)
