"""Variational dequantization: a learned noise distribution q(u | x) on the unit box.

Uniform dequantization trains a flow on y = (x + u) / L with u ~ U[0, 1)^D and reports
E_u[log p(y)] - D log L, a bound that is loose wherever the flow's density is not flat
within a bin (Theis et al., 2016). Drawing u from a learned q(u | x) instead gives

    log P(x) >= E_{u ~ q(u|x)} [log p((x + u) / L) - D log L - log q(u | x)],

which is tight when q(u | x) is the flow's own density within the bin of x, and never
needs more than the flow and q to evaluate (Ho et al., 2019, "Flow++", arXiv:1902.00275,
section 3.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.bijections.coupling import (
    AffineCoupling,
    CheckerboardCoupling,
    alternating_mask,
    checkerboard_mask,
)
from genflow.nn.mlp import MLP
from genflow.nn.resnet import ResNet
from genflow.numeric import sum_except_batch

DEQUANTIZATIONS = ("uniform", "variational")


class VariationalDequantizer(nn.Module):
    """q(u | x) on (0, 1)^D: u = sigmoid(f(eps; x)) with eps ~ N(0, I) and f a stack of affine
    couplings whose conditioners also see x (scaled to [-0.5, 0.5]).

    Images (C, H, W) use checkerboard couplings with small ResNet conditioners (gathered, on
    the fixed half of the pixels, where the width is even), anything
    else alternating-mask couplings on the flattened values with MLP conditioners. The
    couplings start as the identity, so q starts as the logistic-normal sigmoid(N(0, I)).
    ``forward(x)`` draws u for a batch of integer data and returns it with log q(u | x).
    """

    def __init__(
        self, event_shape: tuple[int, ...], levels: int, hidden: int = 32, couplings: int = 4
    ):
        super().__init__()
        if levels < 2:
            raise ValueError(f"variational dequantization needs at least 2 levels, got {levels}")
        self.event_shape = tuple(event_shape)
        self.levels = int(levels)
        self.image = len(self.event_shape) == 3
        layers: list[nn.Module] = []
        for i in range(couplings):
            if self.image:
                c, h, w = self.event_shape
                if w % 2 == 0:  # the conditioner runs on the fixed half only
                    net = ResNet(3 * c + 1, 2 * c, hidden, num_blocks=1)
                    layers.append(CheckerboardCoupling(c, net, i % 2))
                else:
                    net = ResNet(2 * c + 1, 2 * c, hidden, num_blocks=1)
                    layers.append(AffineCoupling(checkerboard_mask(c, h, w, i % 2), net, True))
            else:
                d = math.prod(self.event_shape)
                layers.append(AffineCoupling(alternating_mask(d, i % 2), MLP(2 * d, 2 * d, hidden)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        context = x / (self.levels - 1) - 0.5
        if not self.image:
            context = context.reshape(len(x), -1)
        h = torch.randn_like(context)
        log_q = sum_except_batch(-0.5 * h.pow(2) - 0.5 * math.log(2 * math.pi))
        for layer in self.layers:
            h, logdet = layer(h, context)
            log_q = log_q - logdet
        # u = sigmoid(h): log du/dh = log sigmoid(h) + log sigmoid(-h)
        log_q = log_q - sum_except_batch(F.logsigmoid(h) + F.logsigmoid(-h))
        return torch.sigmoid(h).reshape(x.shape), log_q


def make_dequantizer(
    kind: str,
    event_shape: tuple[int, ...],
    levels: int | None,
    hidden: int = 32,
    couplings: int = 4,
) -> VariationalDequantizer | None:
    """``uniform`` -> None (the flow draws U[0, 1) noise itself); ``variational`` -> q(u | x).

    Continuous data (``levels`` None: the 2-D toys) is not dequantized at all, so either kind
    gives None there.
    """
    if kind not in DEQUANTIZATIONS:
        raise ValueError(f"unknown dequantization '{kind}'; valid: {', '.join(DEQUANTIZATIONS)}")
    if kind == "uniform" or not levels:
        return None
    return VariationalDequantizer(event_shape, levels, hidden, couplings)
