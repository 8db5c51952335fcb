"""The same architectures as genflow's Glow, RealNVP and MAF, built from normflows and zuko.

Used by ``throughput.py --compare``; needs the ``bench`` extra (``pip install -e ".[bench]"``).
Each builder takes genflow's composed config and returns ``loss(x) -> Tensor``, the mean
negative log-likelihood in nats of a batch of discrete images ``x`` (dequantized with uniform
noise, through the same logit preprocessing with its Jacobian, as genflow's flows do), and the
module whose parameters train.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Loss = Callable[[Tensor], Tensor]


def _dequantize(x: Tensor, levels: int) -> Tensor:
    x = x.float()
    return (x + torch.rand_like(x)) / levels


def normflows_glow(cfg) -> tuple[Loss, nn.Module]:
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
        q0, flows, merges, transform=nf.transforms.Logit(alpha=0.05), class_cond=False
    )
    return lambda x: model.forward_kld(_dequantize(x, cfg.dataset.levels)), model


def normflows_realnvp(cfg) -> tuple[Loss, nn.Module]:
    """Two scales: 3 checkerboard couplings, squeeze, 3 channel couplings, factor out half,
    then 4 checkerboard couplings; ResNet conditioners of ``hidden_channels`` and
    ``num_blocks`` blocks (normflows' ConvResidualNet)."""
    import normflows as nf

    c, h, w = cfg.dataset.shape
    hidden, blocks = cfg.model.hidden_channels, cfg.model.num_blocks
    if cfg.model.num_scales != 2:
        raise ValueError("the normflows RealNVP baseline is built for num_scales=2")

    def checkerboard(channels: int, i: int) -> nn.Module:
        net = nf.nets.ConvResidualNet(channels, 2 * channels, hidden, num_blocks=blocks)
        mode = "checkerboard" if i % 2 == 0 else "checkerboard_inv"
        return nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp", split_mode=mode)

    def channel(channels: int, i: int) -> nn.Module:
        net = nf.nets.ConvResidualNet(channels // 2, channels, hidden, num_blocks=blocks)
        mode = "channel" if i % 2 == 0 else "channel_inv"
        return nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp", split_mode=mode)

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
        transform=nf.transforms.Logit(alpha=0.05),
        class_cond=False,
    )
    return lambda x: model.forward_kld(_dequantize(x, cfg.dataset.levels)), model


def _logit_loss(log_prob: Callable[[Tensor], Tensor], levels: int) -> Loss:
    import normflows as nf

    logit = nf.transforms.Logit(alpha=0.05)

    def loss(x: Tensor) -> Tensor:
        y, logdet = logit.inverse(_dequantize(x.flatten(1), levels))
        return -(log_prob(y) + logdet).mean()

    return loss


def normflows_maf(cfg) -> tuple[Loss, nn.Module]:
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
    return _logit_loss(model.log_prob, cfg.dataset.levels), model


def zuko_maf(cfg) -> tuple[Loss, nn.Module]:
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
    return _logit_loss(lambda y: flow().log_prob(y), cfg.dataset.levels), flow


BASELINES: dict[str, list[tuple[str, Callable]]] = {
    "glow": [("normflows", normflows_glow)],
    "realnvp": [("normflows", normflows_realnvp)],
    "maf": [("normflows", normflows_maf), ("zuko", zuko_maf)],
}
