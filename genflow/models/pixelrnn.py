"""PixelRNN: Row LSTM and Diagonal BiLSTM layers with a softmax over levels per pixel and channel.

References: van den Oord et al., 2016, "Pixel Recurrent Neural Networks", arXiv:1601.06759
(sections 3.1-3.4: the Row LSTM's masked 1 x k input-to-state and k x 1 state-to-state
convolutions, the Diagonal BiLSTM's skew and 2 x 1 state-to-state convolution, the
right-to-left direction shifted down one row, residual connections, masks A and B).

Colour: the hidden units are split into C contiguous colour groups like every masked layer's
channels, and the masks of the gate convolutions are built per gate block (input, forget,
output, candidate: h channels each), so all four gates of a unit have the unit's colour; the
cell and hidden state of a unit then depend only on what its colour may see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.models.arm import draw
from genflow.models.pixelcnn import PixelARM
from genflow.nn.masked_conv import MaskedConv2d, pixelcnn_mask

PIXELRNN_VARIANTS = ("row_lstm", "diagonal_bilstm")


GATES = 4  # input, forget, output, candidate


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """gates (B, 4h, ...) in blocks i, f, o, g -> the new (h, c): c' = f c + i g,
    h' = o tanh(c')."""
    i, f, o, g = gates.chunk(GATES, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gate_mask(hidden: int, in_channels: int, kernel_size: int, color_groups: int) -> Tensor:
    """Mask B for a convolution to 4 gate blocks of ``hidden`` units: each block masked as a
    convolution to the units themselves, so gate k of unit u has unit u's colour."""
    mask = pixelcnn_mask(hidden, in_channels, kernel_size, "B", color_groups)
    return mask.repeat(GATES, 1, 1, 1)


class MaskedRowConv(nn.Conv1d):
    """A 1 x k convolution along a row to 4 gate blocks of ``hidden`` units, masked like the
    centre row of PixelCNN's mask B: the pixels to the left, and at the centre the channel
    groups up to the unit's own."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int, color_groups: int):
        super().__init__(in_channels, GATES * hidden, kernel_size, padding=kernel_size // 2)
        mask = gate_mask(hidden, in_channels, kernel_size, color_groups)
        self.register_buffer("mask", mask[:, :, kernel_size // 2, :].contiguous())

    def forward(self, rows: Tensor) -> Tensor:
        """(B, C, W) rows -> (B, C_out, W)."""
        return F.conv1d(rows, self.weight * self.mask, self.bias, padding=self.padding)


def skew(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W + H - 1) with row r shifted right by r (zeros elsewhere)."""
    b, c, h, w = x.shape
    flat = F.pad(x, (0, h)).flatten(2)[:, :, : h * (w + h - 1)]
    return flat.view(b, c, h, w + h - 1)


def unskew(x: Tensor, width: int) -> Tensor:
    """The inverse of ``skew``: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    b, c, h, _ = x.shape
    flat = F.pad(x.flatten(2), (0, h))
    return flat.view(b, c, h, width + h)[:, :, :, :width]


class RowLSTM(nn.Module):
    """One Row LSTM layer, residual: x + 1x1(h), where row r of h comes from an LSTM step
    on the masked 1 x k convolution of row r of x and the k-wide convolution of row r - 1's
    hidden state; the cell state runs down the columns."""

    def __init__(self, channels: int, hidden: int, kernel_size: int, color_groups: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedRowConv(channels, hidden, kernel_size, color_groups)
        self.state_to_state = nn.Conv1d(
            hidden, GATES * hidden, kernel_size, padding=kernel_size // 2
        )
        self.output = MaskedConv2d(hidden, channels, 1, "B", color_groups)

    def initial_state(self, x_row: Tensor) -> tuple[Tensor, ...]:
        zeros = x_row.new_zeros(x_row.shape[0], self.hidden, x_row.shape[-1])
        return zeros, zeros

    def row(self, x_row: Tensor, above: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Row r: its input (B, C, W) and row r - 1's state -> (the layer's output row, the
        state of row r)."""
        h_above, c_above = above
        gates = self.input_to_state(x_row) + self.state_to_state(h_above)
        h, c = lstm_cell(gates, c_above)
        return x_row + self.output(h.unsqueeze(2)).squeeze(2), (h, c)

    def forward(self, x: Tensor) -> Tensor:
        b, ch, height, width = x.shape
        gates_in = self.input_to_state(x.permute(0, 2, 1, 3).reshape(b * height, ch, width))
        gates_in = gates_in.view(b, height, GATES * self.hidden, width)
        h, c = self.initial_state(x[:, :, 0])
        rows = []
        for r in range(height):
            h, c = lstm_cell(gates_in[:, r] + self.state_to_state(h), c)
            rows.append(h)
        return x + self.output(torch.stack(rows, dim=2))


class DiagonalLSTM(nn.Module):
    """One direction of the Diagonal BiLSTM, left to right: the state at (r, j) comes from an
    LSTM step on the masked 1x1 convolution of x at (r, j) and a 2 x 1 convolution of the
    hidden states above (r - 1, j) and to the left (r, j - 1); the cell state runs along the
    row. Run over the skewed map, one column (a diagonal of the image) per step; states
    outside the image are held at zero, so the first column and row start from zero state."""

    def __init__(self, channels: int, hidden: int, color_groups: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(channels, GATES * hidden, 1, "B", color_groups)
        self.input_to_state.mask.copy_(gate_mask(hidden, channels, 1, color_groups))
        # kernel tap 0 reads the row above, tap 1 this row (the left neighbour, one column back)
        self.state_to_state = nn.Conv1d(hidden, GATES * hidden, 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> hidden states (B, h, H, W)."""
        b, _, height, width = x.shape
        gates_in = skew(self.input_to_state(x))
        h = x.new_zeros(b, self.hidden, height)
        c = torch.zeros_like(h)
        rows = torch.arange(height, device=x.device)
        states = []
        for col in range(width + height - 1):
            gates = gates_in[:, :, :, col] + self.state_to_state(F.pad(h, (1, 0)))
            h, c = lstm_cell(gates, c)
            inside = ((col - rows >= 0) & (col - rows < width)).to(h.dtype)
            h, c = h * inside, c * inside
            states.append(h)
        return unskew(torch.stack(states, dim=3), width)

    def row(self, x_row: Tensor, h_above: Tensor) -> tuple[Tensor, Tensor]:
        """Row r left to right, given row r - 1's hidden states (B, h, W): (h, c) of row r."""
        gates_in = self.input_to_state(x_row.unsqueeze(2)).squeeze(2)
        w_above, w_left = self.state_to_state.weight.unbind(2)
        from_above = (
            torch.einsum("oi,biw->bow", w_above, h_above) + self.state_to_state.bias[:, None]
        )
        h = x_row.new_zeros(x_row.shape[0], self.hidden)
        c = torch.zeros_like(h)
        hs, cs = [], []
        for j in range(x_row.shape[-1]):
            gates = gates_in[:, :, j] + from_above[:, :, j] + F.linear(h, w_left)
            h, c = lstm_cell(gates, c)
            hs.append(h)
            cs.append(c)
        return torch.stack(hs, dim=2), torch.stack(cs, dim=2)


class DiagonalBiLSTM(nn.Module):
    """x + 1x1(left-to-right states + right-to-left states shifted down one row): the
    right-to-left direction runs on the mirrored map, and the shift keeps it causal (row r
    sees only rows above it through that direction)."""

    def __init__(self, channels: int, hidden: int, color_groups: int):
        super().__init__()
        self.hidden = hidden
        self.left_to_right = DiagonalLSTM(channels, hidden, color_groups)
        self.right_to_left = DiagonalLSTM(channels, hidden, color_groups)
        self.output = MaskedConv2d(hidden, channels, 1, "B", color_groups)

    def forward(self, x: Tensor) -> Tensor:
        forward_states = self.left_to_right(x)
        backward_states = self.right_to_left(x.flip(-1)).flip(-1)
        shifted = F.pad(backward_states, (0, 0, 1, 0))[:, :, :-1]
        return x + self.output(forward_states + shifted)

    def initial_state(self, x_row: Tensor) -> tuple[Tensor, ...]:
        zeros = x_row.new_zeros(x_row.shape[0], self.hidden, x_row.shape[-1])
        return zeros, zeros

    def row(self, x_row: Tensor, above: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Row r (B, C, W) given row r - 1's (left-to-right h, right-to-left h): the output row
        and row r's state. The right-to-left states of row r are exact only once the whole
        row is known; row r's output uses row r - 1's."""
        h_forward_above, h_backward_above = above
        h_forward, _ = self.left_to_right.row(x_row, h_forward_above)
        h_backward, _ = self.right_to_left.row(x_row.flip(-1), h_backward_above.flip(-1))
        out = x_row + self.output((h_forward + h_backward_above).unsqueeze(2)).squeeze(2)
        return out, (h_forward, h_backward.flip(-1))


class PixelRNN(PixelARM):
    """A mask-A ``first_kernel_size`` convolution to 2h channels, ``num_layers`` residual
    Row LSTM or Diagonal BiLSTM layers of h = ``hidden_channels`` units, and two masked 1x1
    convolutions giving ``levels`` logits per pixel and channel (R, G, B order).

    ``sample`` goes row by row carrying each layer's recurrent state from the row above:
    each new value recomputes only its own row of every layer, and gives exactly the naive
    sampler's images for the same seed. With ``num_classes`` a learned class vector joins the
    hidden map after the first convolution and before every layer.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        variant: str = "row_lstm",
        hidden_channels: int = 32,
        num_layers: int = 3,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
    ):
        super().__init__(event_shape, levels, num_classes, context_features, context_net)
        if variant not in PIXELRNN_VARIANTS:
            raise ValueError(
                f"unknown PixelRNN variant '{variant}'; valid: {', '.join(PIXELRNN_VARIANTS)}"
            )
        c = self.event_shape[0]
        self.variant = variant
        channels = 2 * hidden_channels
        self.input = MaskedConv2d(c, channels, first_kernel_size, "A", c)
        if variant == "row_lstm":
            layers = [RowLSTM(channels, hidden_channels, kernel_size, c) for _ in range(num_layers)]
        else:
            layers = [DiagonalBiLSTM(channels, hidden_channels, c) for _ in range(num_layers)]
        self.layers = nn.ModuleList(layers)
        self.head_hidden = MaskedConv2d(channels, channels, 1, "B", c)
        self.head_out = MaskedConv2d(channels, c * self.levels, 1, "B", c)
        self.classes = self.class_bias([channels] * (num_layers + 1))

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        bias = self.class_vectors(y)
        h = self.input(self.scale(x))
        if bias[0] is not None:
            h = h + bias[0][:, :, None, None]
        for layer, b in zip(self.layers, bias[1:], strict=True):
            h = layer(h if b is None else h + b[:, :, None, None])
        return self._to_logits(self._head(h))

    # -- sampling row by row --------------------------------------------------------------
    def _row(
        self, image: Tensor, r: int, above: list[tuple[Tensor, ...]], bias: list
    ) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """Logits of row r (B, levels, C, W) from the padded scaled image and each layer's
        state of row r - 1 (``bias``: the class vectors, or Nones); and each layer's state
        of row r."""
        k = self.input.kernel_size[0]
        h = F.conv2d(image[:, :, r : r + k], self.input.weight * self.input.mask, self.input.bias)
        h = h.squeeze(2)
        if bias[0] is not None:
            h = h + bias[0][:, :, None]
        states = []
        for layer, state, b in zip(self.layers, above, bias[1:], strict=True):
            h, new_state = layer.row(h if b is None else h + b[:, :, None], state)
            states.append(new_state)
        return self._to_logits(self._head(h.unsqueeze(2))).squeeze(-2), states

    @torch.no_grad()
    def sample_cached(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        c, height, width = self.event_shape
        device = self.input.weight.device
        bias = self.class_vectors(self.condition(n, y, device))
        pad = self.input.kernel_size[0] // 2
        image = torch.zeros(
            n, c, height + 2 * pad, width + 2 * pad, device=device, dtype=self.dtype
        )
        out = torch.zeros(n, c, height, width, dtype=torch.long, device=device)
        first = torch.zeros(n, 2 * self.layers[0].hidden, width, device=device, dtype=self.dtype)
        above = [layer.initial_state(first) for layer in self.layers]
        for r in range(height):
            for j in range(width):
                for ch in range(c):  # channel ch may read channels < ch of this pixel
                    logits, _ = self._row(image, r, above, bias)
                    value = draw(logits[:, :, ch, j], temperature)
                    out[:, ch, r, j] = value
                    image[:, ch, r + pad, j + pad] = self.scale(value)
            _, above = self._row(image, r, above, bias)  # the row is complete: carry its state
        return out
