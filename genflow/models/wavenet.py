"""A WaveNet-style ARM: gated causal dilated 1-D convolutions over a flattened sequence.

References: van den Oord et al., 2016, "WaveNet: A Generative Model for Raw Audio",
arXiv:1609.03499; Paine et al., 2016, "Fast Wavenet Generation Algorithm", arXiv:1611.09482.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.models.arm import AutoregressiveModel, draw
from genflow.nn.causal_conv import CausalConv1d


class WaveNet(AutoregressiveModel):
    """Embedding of the previous value, ``num_blocks`` x ``layers_per_block`` gated residual
    layers with dilations 1, 2, 4, ... per block, skip connections summed into a 1x1 head that
    gives ``levels`` logits per position. Images are modelled as their flattened sequence.

    ``sample`` is cached: each layer keeps the few past inputs its dilated kernel needs, so a
    new value costs one small matrix product per layer instead of a pass over the sequence.
    With ``num_classes`` a learned class vector joins every layer's gate inputs (the paper's
    global conditioning).
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        residual_channels: int = 64,
        skip_channels: int = 128,
        kernel_size: int = 2,
        layers_per_block: int = 6,
        num_blocks: int = 2,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
    ):
        super().__init__(event_shape, levels, num_classes, context_features, context_net)
        r = residual_channels
        self.embed = nn.Embedding(self.levels, r)
        self.dilated = nn.ModuleList()
        self.residual = nn.ModuleList()
        self.skip = nn.ModuleList()
        for _ in range(num_blocks):
            for layer in range(layers_per_block):
                self.dilated.append(CausalConv1d(r, 2 * r, kernel_size, dilation=2**layer))
                self.residual.append(nn.Conv1d(r, r, 1))
                self.skip.append(nn.Conv1d(r, skip_channels, 1))
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(skip_channels, skip_channels, 1),
            nn.ReLU(),
            nn.Conv1d(skip_channels, self.levels, 1),
        )
        self.classes = self.class_bias([2 * r] * len(self.dilated))

    def _inputs(self, x: Tensor) -> Tensor:
        """Embeddings shifted right by one: position t sees x_<t (a zero vector at t = 0)."""
        e = self.embed(x.reshape(x.shape[0], -1).long()).transpose(1, 2)
        return F.pad(e, (1, 0))[:, :, :-1]

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self._inputs(x)
        skips = 0.0
        layers = zip(self.dilated, self.residual, self.skip, self.class_vectors(y), strict=True)
        for dilated, residual, skip, classes in layers:
            pre = dilated(h)
            if classes is not None:
                pre = pre + classes[:, :, None]
            a, g = pre.chunk(2, dim=1)
            z = torch.tanh(a) * torch.sigmoid(g)
            skips = skips + skip(z)
            h = h + residual(z)
        return self.head(skips).view(x.shape[0], self.levels, *self.event_shape)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        return self.sample_cached(n, temperature, y)

    @torch.no_grad()
    def sample_cached(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        device = self.embed.weight.device
        class_vectors = self.class_vectors(self.condition(n, y, device))
        length = math.prod(self.event_shape)
        r = self.embed.embedding_dim
        queues = [
            torch.zeros(n, r, conv.history, device=device, dtype=self.dtype)
            for conv in self.dilated
        ]
        out = torch.zeros(n, length, dtype=torch.long, device=device)
        h_in = torch.zeros(n, r, device=device, dtype=self.dtype)  # the shifted input at t = 0
        for t in range(length):
            h, skips = h_in, 0.0
            for k, (dilated, residual, skip, classes) in enumerate(
                zip(self.dilated, self.residual, self.skip, class_vectors, strict=True)
            ):
                queues[k] = torch.cat([queues[k][:, :, 1:], h.unsqueeze(-1)], dim=-1)
                pre = dilated.forward_at(queues[k])
                if classes is not None:
                    pre = pre + classes
                a, g = pre.chunk(2, dim=1)
                z = (torch.tanh(a) * torch.sigmoid(g)).unsqueeze(-1)
                skips = skips + skip(z)
                h = h + residual(z).squeeze(-1)
            out[:, t] = draw(self.head(skips)[:, :, 0], temperature)
            h_in = self.embed(out[:, t])
        return out.view(n, *self.event_shape)
