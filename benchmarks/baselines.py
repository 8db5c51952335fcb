"""The same architectures as genflow's Glow, RealNVP, MAF and NSF, built from normflows,
nflows and zuko.

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


# vectors (tables, SBI tasks): each builder takes genflow's composed config and returns
# ``log_prob(z, c)`` of standardised data z given the standardised context c (None without
# one), ``sample(n, c)`` (n draws for one context c, or unconditional), and the module; the
# benchmark standardises with the training split's statistics, as genflow's model does inside
# itself, and counts the same log-det.
LogProb = Callable[[Tensor, Tensor | None], Tensor]
Sample = Callable[[int, Tensor | None], Tensor]


def _context_width(cfg) -> int | None:
    return cfg.model.get("context_features") or None


def _vector_width(cfg) -> int:
    return math.prod(cfg.dataset.shape)


def _nflows_flow(cfg, layers: list) -> tuple[LogProb, Sample, nn.Module]:
    """An nflows Flow of ``layers`` on a standard normal, or (with a context) on nflows'
    conditional diagonal normal whose mean and log-scale are linear in the context, as
    genflow's context base."""
    from nflows.distributions import ConditionalDiagonalNormal, StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import CompositeTransform

    d, ctx = _vector_width(cfg), _context_width(cfg)
    base = (
        ConditionalDiagonalNormal([d], context_encoder=nn.Linear(ctx, 2 * d))
        if ctx
        else StandardNormal([d])
    )
    flow = Flow(CompositeTransform(layers), base)

    def sample(n: int, c: Tensor | None) -> Tensor:
        if c is None:
            return flow.sample(n)
        return flow.sample(n, context=c.reshape(1, -1))[0]

    return (lambda z, c: flow.log_prob(z, context=c)), sample, flow


def _nflows_mixing(cfg, index: int) -> list[nn.Module]:
    """genflow's ``model.linear`` between splines: nflows' LU linear, or reversed orders."""
    from nflows.transforms import LULinear, ReversePermutation

    d = _vector_width(cfg)
    linear = cfg.model.get("linear", "none")
    if linear == "lu":
        return [LULinear(d, identity_init=True)]
    if linear == "none":
        return [ReversePermutation(d)] if index % 2 else []
    raise ValueError(f"the nflows baseline is built for model.linear=lu or none, not {linear}")


def nflows_nsf(cfg) -> tuple[LogProb, Sample, nn.Module]:
    """nflows' NSF as its paper's tabular models: ``num_layers`` of [LU linear, rational-quadratic
    spline coupling with a ResidualNet conditioner (``num_blocks`` blocks of
    ``hidden_features``; the context into its first layer and every block) or a MADE-driven
    spline (``hidden_layers`` masked layers)], a last LU linear; linear tails outside
    [-tail_bound, tail_bound], ``num_bins`` bins."""
    from nflows.nn.nets import ResidualNet
    from nflows.transforms import (
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
    )

    m, d, ctx = cfg.model, _vector_width(cfg), _context_width(cfg)
    layers: list[nn.Module] = []
    for i in range(m.num_layers):
        layers += _nflows_mixing(cfg, i)
        if m.kind == "coupling":
            mask = ((torch.arange(d) + i % 2) % 2 == 0).float()  # genflow's alternating mask

            def net(inputs: int, outputs: int) -> nn.Module:
                return ResidualNet(
                    inputs,
                    outputs,
                    m.hidden_features,
                    context_features=ctx,
                    num_blocks=m.num_blocks,
                    dropout_probability=m.dropout,
                )

            layers.append(
                PiecewiseRationalQuadraticCouplingTransform(
                    1 - mask,  # nflows transforms where the mask is 1, genflow where it is 0
                    net,
                    num_bins=m.num_bins,
                    tails="linear",
                    tail_bound=m.tail_bound,
                )
            )
        else:
            layers.append(
                MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    d,
                    m.hidden_features,
                    context_features=ctx,
                    num_bins=m.num_bins,
                    tails="linear",
                    tail_bound=m.tail_bound,
                    num_blocks=m.hidden_layers - 1,
                    use_residual_blocks=False,
                    dropout_probability=m.dropout,
                )
            )
    layers += _nflows_mixing(cfg, m.num_layers)
    return _nflows_flow(cfg, layers)


def nflows_conditional_maf(cfg) -> tuple[LogProb, Sample, nn.Module]:
    """nflows' MAF on vectors: ``num_layers`` MaskedAffineAutoregressiveTransforms (MADE of
    ``hidden_layers`` masked layers of ``hidden_features``, the context into the first),
    orders reversed between layers."""
    from nflows.transforms import MaskedAffineAutoregressiveTransform, ReversePermutation

    m, d = cfg.model, _vector_width(cfg)
    layers: list[nn.Module] = []
    for i in range(m.num_layers):
        layers.append(
            MaskedAffineAutoregressiveTransform(
                d,
                m.hidden_features,
                context_features=_context_width(cfg),
                num_blocks=m.hidden_layers - 1,
                use_residual_blocks=False,
            )
        )
        if i < m.num_layers - 1:
            layers.append(ReversePermutation(d))
    return _nflows_flow(cfg, layers)


def _zuko_flow(flow) -> tuple[LogProb, Sample, nn.Module]:
    def log_prob(z: Tensor, c: Tensor | None) -> Tensor:
        return flow(c).log_prob(z)

    def sample(n: int, c: Tensor | None) -> Tensor:
        return flow(c).sample((n,))

    return log_prob, sample, flow


def zuko_hidden(cfg, build: Callable[[int], nn.Module], target: int) -> int:
    """The hidden width at which ``build(width)`` has the parameter count nearest ``target``
    (zuko's conditioners are masked MLPs over every feature, so they need another width
    than genflow's to have as many parameters)."""
    count = lambda w: sum(p.numel() for p in build(w).parameters())  # noqa: E731
    low, high = 1, 8 * int(cfg.model.hidden_features)
    while low < high:  # the smallest width with at least ``target`` parameters
        mid = (low + high) // 2
        if count(mid) < target:
            low = mid + 1
        else:
            high = mid
    return min((low - 1, low), key=lambda w: abs(count(max(w, 1)) - target))


def zuko_nsf(cfg, hidden: int | None = None) -> tuple[LogProb, Sample, nn.Module]:
    """zuko's NSF (its MAF with monotonic rational-quadratic splines of ``num_bins`` bins on
    [-tail_bound, tail_bound], identity outside), ``num_layers`` transforms with orders
    reversed between them: fully autoregressive, or coupling (``passes=2``) for
    ``model.kind=coupling``; its masked-MLP conditioners have ``hidden_layers`` layers of
    ``hidden`` units (genflow's width unless given)."""
    from functools import partial

    import zuko

    m = cfg.model
    flow = zuko.flows.MAF(
        _vector_width(cfg),
        _context_width(cfg) or 0,
        transforms=m.num_layers,
        passes=2 if m.kind == "coupling" else None,
        univariate=partial(zuko.transforms.MonotonicRQSTransform, bound=float(m.tail_bound)),
        shapes=[(m.num_bins,), (m.num_bins,), (m.num_bins - 1,)],
        hidden_features=[hidden or m.hidden_features] * m.hidden_layers,
    )
    return _zuko_flow(flow)


def zuko_conditional_maf(cfg, hidden: int | None = None) -> tuple[LogProb, Sample, nn.Module]:
    """zuko's MAF on vectors: ``num_layers`` affine MADE transforms of ``hidden_layers`` x
    ``hidden`` (genflow's width unless given), orders reversed between layers."""
    import zuko

    m = cfg.model
    flow = zuko.flows.MAF(
        _vector_width(cfg),
        _context_width(cfg) or 0,
        transforms=m.num_layers,
        hidden_features=[hidden or m.hidden_features] * m.hidden_layers,
    )
    return _zuko_flow(flow)


def nflows_nsf_image(cfg) -> tuple[Nll, nn.Module]:
    """``nflows_nsf`` on the flattened pixels, behind the shared logit."""
    log_prob, _, flow = nflows_nsf(cfg)
    return _logit_nll(lambda y: log_prob(y, None), cfg), flow


def zuko_nsf_image(cfg, hidden: int | None = None) -> tuple[Nll, nn.Module]:
    """``zuko_nsf`` on the flattened pixels, behind the shared logit."""
    log_prob, _, flow = zuko_nsf(cfg, hidden)
    return _logit_nll(lambda y: log_prob(y, None), cfg), flow


# vector comparisons: library -> builder; zuko's builders take a hidden width (matched to
# genflow's parameter count by the benchmark)
VECTOR_BASELINES: dict[str, list[tuple[str, Callable]]] = {
    "nsf": [("nflows", nflows_nsf), ("zuko", zuko_nsf)],
    "maf": [("nflows", nflows_conditional_maf), ("zuko", zuko_conditional_maf)],
}

BASELINES: dict[str, list[tuple[str, Callable]]] = {
    "glow": [("normflows", normflows_glow)],
    "realnvp": [("normflows", normflows_realnvp)],
    "maf": [("normflows", normflows_maf), ("nflows", nflows_maf), ("zuko", zuko_maf)],
    "nsf": [("nflows", nflows_nsf_image), ("zuko", zuko_nsf_image)],
}
