"""The same architectures as genflow's Glow, RealNVP and MAF, built from normflows, nflows
and zuko.

Used by ``throughput.py --compare`` and ``peers.py``; needs the ``bench`` extra (``pip install
-e ".[bench]"``). Each builder takes genflow's composed config and returns ``nll(x) -> Tensor``,
the per-example negative log-likelihood in nats of a batch of discrete images ``x`` as
continuous data on [0, 1)^D (dequantized with uniform noise, through the same logit
preprocessing with its Jacobian and the same ``model.logit_alpha`` as genflow's flows), and
the module whose parameters train. ``to_bpd`` turns that into bits per dimension of the
discrete data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

Nll = Callable[[Tensor], Tensor]


def _dequantize(x: Tensor, levels: int) -> Tensor:
    x = x.float()
    return (x + torch.rand_like(x)) / levels


def to_bpd(nll: Tensor, cfg) -> Tensor:
    """Nats of [0, 1)^D data -> bits per dimension of the discrete levels: each of the D
    values' bins has width 1 / levels, so log P(x) >= log p(x_c) - D log(levels)."""
    num_dims = math.prod(cfg.dataset.shape)
    return (nll / num_dims + math.log(cfg.dataset.levels)) / math.log(2)


def _alpha(cfg) -> float:
    return float(cfg.model.logit_alpha)


def normflows_glow(cfg) -> tuple[Nll, nn.Module]:
    """L levels of K GlowBlocks (affine coupling with Glow's 3-1-3 conv net, invertible 1x1
    conv, ActNorm), squeezes and channel splits, as in normflows' Glow example."""
    import normflows as nf

    c, h, w = cfg.dataset.shape
    levels, steps, hidden = (
        cfg.model.num_levels,
        cfg.model.steps_per_level,
        cfg.model.hidden_channels,
    )
    q0, merges, flows = [], [], []
    for i in range(levels):
        blocks = [
            nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
            for _ in range(steps)
        ]
        flows.append([*blocks, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            shape = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        q0.append(nf.distributions.DiagGaussian(shape, trainable=False))
    model = nf.MultiscaleFlow(
        q0, flows, merges, transform=nf.transforms.Logit(alpha=_alpha(cfg)), class_cond=False
    )
    # normflows 1.7 takes the class labels positionally, None when not class-conditional
    return lambda x: -model.log_prob(_dequantize(x, cfg.dataset.levels), None), model


def normflows_realnvp(cfg) -> tuple[Nll, nn.Module]:
    """Two scales: 3 checkerboard couplings, squeeze, 3 channel couplings, factor out half,
    then 4 checkerboard couplings; ResNet conditioners of ``hidden_channels`` and
    ``num_blocks`` blocks (normflows' ConvResidualNet, ReLU).

    The scale map is normflows' ``sigmoid`` (Glow's bounded sigmoid(raw + 2), contracting on
    the way to the latent): with its default ``exp`` every one of 1500 MNIST steps was
    non-finite (benchmarks/README.md), since its conditioners' last layers are not
    zero-initialised and exp overflows on logit-space data from the first batch."""
    import normflows as nf

    c, h, w = cfg.dataset.shape
    hidden, blocks = cfg.model.hidden_channels, cfg.model.num_blocks
    if cfg.model.num_scales != 2:
        raise ValueError("the normflows RealNVP baseline is built for num_scales=2")

    def checkerboard(channels: int, i: int) -> nn.Module:
        net = nf.nets.ConvResidualNet(channels, 2 * channels, hidden, num_blocks=blocks)
        mode = "checkerboard" if i % 2 == 0 else "checkerboard_inv"
        return nf.flows.AffineCouplingBlock(net, scale=True, scale_map="sigmoid", split_mode=mode)

    def channel(channels: int, i: int) -> nn.Module:
        net = nf.nets.ConvResidualNet(channels // 2, channels, hidden, num_blocks=blocks)
        mode = "channel" if i % 2 == 0 else "channel_inv"
        return nf.flows.AffineCouplingBlock(net, scale=True, scale_map="sigmoid", split_mode=mode)

    inner = (2 * c, h // 2, w // 2)  # what the second scale sees after the factor-out
    # normflows lists flows from the latent to the data (the reverse of genflow's order)
    deepest = [checkerboard(inner[0], i) for i in range(cfg.model.final_couplings)]
    outer = [channel(4 * c, i) for i in range(cfg.model.couplings_per_scale)]
    outer += [nf.flows.Squeeze()]
    outer += [checkerboard(c, i) for i in range(cfg.model.couplings_per_scale)]
    q0 = [nf.distributions.DiagGaussian(inner, trainable=False) for _ in range(2)]
    model = nf.MultiscaleFlow(
        q0,
        [deepest, outer],
        [nf.flows.Merge()],
        transform=nf.transforms.Logit(alpha=_alpha(cfg)),
        class_cond=False,
    )
    # normflows 1.7 takes the class labels positionally, None when not class-conditional
    return lambda x: -model.log_prob(_dequantize(x, cfg.dataset.levels), None), model


def _logit_nll(log_prob: Callable[[Tensor], Tensor], cfg) -> Nll:
    """The flat vector models: normflows' logit transform (with its Jacobian) in front of
    ``log_prob``, the same map for every library."""
    import normflows as nf

    logit = nf.transforms.Logit(alpha=_alpha(cfg))

    def nll(x: Tensor) -> Tensor:
        y, logdet = logit.inverse(_dequantize(x.flatten(1), cfg.dataset.levels))
        return -(log_prob(y) + logdet)

    return nll


def normflows_maf(cfg) -> tuple[Nll, nn.Module]:
    """``num_layers`` MADE layers (``hidden_layers`` masked layers of ``hidden_features``, no
    residual blocks, no batch norm) with reversing permutations between them."""
    import normflows as nf

    d = int(torch.tensor(list(cfg.dataset.shape)).prod())
    flows: list[nn.Module] = []
    for _ in range(cfg.model.num_layers):
        flows.append(
            nf.flows.MaskedAffineAutoregressive(
                d,
                cfg.model.hidden_features,
                num_blocks=cfg.model.hidden_layers - 1,
                use_residual_blocks=False,
            )
        )
        flows.append(nf.flows.Permute(d, mode="swap"))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), flows)
    return _logit_nll(model.log_prob, cfg), model


def zuko_maf(cfg) -> tuple[Nll, nn.Module]:
    """zuko's MAF: ``num_layers`` affine MADE transforms of ``hidden_layers`` x
    ``hidden_features``, orders reversed between layers."""
    import zuko

    d = int(torch.tensor(list(cfg.dataset.shape)).prod())
    flow = zuko.flows.MAF(
        d,
        0,
        transforms=cfg.model.num_layers,
        hidden_features=[cfg.model.hidden_features] * cfg.model.hidden_layers,
    )
    return _logit_nll(lambda y: flow().log_prob(y), cfg), flow


def nflows_maf(cfg) -> tuple[Nll, nn.Module]:
    """nflows' MAF: ``num_layers`` MaskedAffineAutoregressiveTransforms (MADE with
    ``hidden_layers`` masked hidden layers of ``hidden_features``, no residual blocks, no batch
    norm), orders reversed between layers, on a standard normal."""
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        ReversePermutation,
    )

    d = math.prod(cfg.dataset.shape)
    layers = []
    for i in range(cfg.model.num_layers):
        layers.append(
            MaskedAffineAutoregressiveTransform(
                d,
                cfg.model.hidden_features,
                num_blocks=cfg.model.hidden_layers - 1,
                use_residual_blocks=False,
            )
        )
        if i < cfg.model.num_layers - 1:
            layers.append(ReversePermutation(d))
    flow = Flow(CompositeTransform(layers), StandardNormal([d]))
    return _logit_nll(flow.log_prob, cfg), flow


BASELINES: dict[str, list[tuple[str, Callable]]] = {
    "glow": [("normflows", normflows_glow)],
    "realnvp": [("normflows", normflows_realnvp)],
    "maf": [("normflows", normflows_maf), ("nflows", nflows_maf), ("zuko", zuko_maf)],
}
