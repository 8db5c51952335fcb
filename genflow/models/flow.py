"""Density flows on discrete or continuous data, with every preprocessing term counted."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genflow.bijections.base import Bijection
from genflow.bijections.elementwise import Standardize
from genflow.bijections.logit import Logit
from genflow.distributions.dequantization import make_dequantizer
from genflow.distributions.normal import StandardNormal
from genflow.models.base import (
    GenerativeModel,
    check_context_features,
    check_num_classes,
    check_one_condition,
)
from genflow.nn.context import ContextEmbedding, check_context_net
from genflow.numeric import full_precision


class FlowModel(GenerativeModel):
    """x -> (dequantize, scale to [0, 1)) -> logit -> flow -> N(0, I).

    For discrete data with ``levels`` values per dimension, uniform dequantization gives
    x_c = (x + u) / levels with u ~ U[0, 1)^D, and log p(x) >= E_u[log p_c(x_c)] - D log(levels)
    (Theis et al., 2016, arXiv:1511.01844). ``dequantization="variational"`` draws u from a
    learned q(u | x) instead and subtracts log q(u | x) (Ho et al., 2019; see
    genflow/distributions/dequantization.py). The scaling to [0, 1) and the logit's log-det are
    counted, so ``nll`` and ``bpd`` are for the discrete data itself. For continuous data
    (``levels=None``) the flow models the values directly. The families (NICE, RealNVP, MAF,
    Glow) pass their ``**flow_options`` (``dequantization``, ``dequantizer_hidden``,
    ``dequantizer_couplings``, ``num_classes``) through to this constructor.

    With ``num_classes`` the model is p(x | y): the base becomes a diagonal Gaussian with a
    learned mean and log-scale per class over the whole latent (zero at the start, so every
    class starts at N(0, I)), as Glow conditions its prior on the class; the flow itself is
    shared. ``encode`` / ``decode`` stay the unconditional bijection.

    With ``context_features`` the model is p(x | c) for a context vector c per example: c is
    standardised (the training split's statistics) and optionally embedded by an MLP
    (``context_net``, see genflow/nn/context.py), then feeds the base, a diagonal Gaussian
    whose mean and log-scale are a linear function of it (zero at the start: N(0, I)), and,
    where the family says so (``flow_takes_context``: the vector flows), every conditioner of
    the flow. Families size their conditioners with ``embedded_width``.
    """

    can_encode = True
    takes_context = True

    def __init__(
        self,
        flow: Bijection,
        event_shape: tuple[int, ...],
        levels: int | None = None,
        logit_alpha: float | None = 0.05,
        base: nn.Module | None = None,
        dequantization: str = "uniform",
        dequantizer_hidden: int = 32,
        dequantizer_couplings: int = 4,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
        flow_takes_context: bool = False,
    ):
        super().__init__(event_shape, levels)
        self.num_classes = check_num_classes(num_classes)
        self.context_features = check_context_features(context_features)
        check_one_condition(self.num_classes, self.context_features)
        if self.num_classes is not None:
            shape = (self.num_classes, *self.event_shape)
            self.class_loc = nn.Parameter(torch.zeros(shape))
            self.class_log_scale = nn.Parameter(torch.zeros(shape))
        if self.context_features is not None:
            self.context_embedding = ContextEmbedding(
                self.context_features, **check_context_net(context_net)
            )
            self.context_base = nn.Linear(self.context_embedding.out_features, 2 * self.num_dims)
            nn.init.zeros_(self.context_base.weight)
            nn.init.zeros_(self.context_base.bias)
        self.flow_takes_context = bool(flow_takes_context) and self.context_features is not None
        self.flow = flow
        self.dequantizer = make_dequantizer(
            dequantization, self.event_shape, self.levels, dequantizer_hidden, dequantizer_couplings
        )
        self.logit = Logit(logit_alpha) if (logit_alpha is not None and self.levels) else None
        # continuous data: a fixed standardisation (a table's, set from its training split)
        self.standardize = None if self.levels else Standardize(self.event_shape)
        self.base = base if base is not None else StandardNormal(self.event_shape)

    def preprocess(self, x: Tensor, noise: bool = True) -> tuple[Tensor, Tensor]:
        """Discrete x -> continuous y on which the flow runs, and the log-det of the map.

        ``noise=False`` puts each value at the centre of its bin (for encoding, not for bpd).
        """
        y = x.to(self._float_dtype())
        logdet = y.new_zeros(y.shape[0])
        if self.levels:
            if not noise:
                u = 0.5
            elif self.dequantizer is not None:
                u, log_q = self.dequantizer(y)
                logdet = logdet - log_q
            else:
                u = torch.rand_like(y)
            y = (y + u) / self.levels
            logdet = logdet - self.num_dims * math.log(self.levels)
        if self.logit is not None:
            y, ld = self.logit(y)
            logdet = logdet + ld
        if self.standardize is not None:
            y, ld = self.standardize(y)
            logdet = logdet + ld
        return y, logdet

    def _float_dtype(self) -> torch.dtype:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), None)
        return tensor.dtype if tensor is not None else torch.get_default_dtype()

    def postprocess(self, y: Tensor) -> Tensor:
        """Continuous flow space -> data space (discrete levels for discrete data)."""
        if self.standardize is not None:
            y, _ = self.standardize.inverse(y)
        if self.logit is not None:
            y, _ = self.logit.inverse(y)
        if self.levels:
            y = torch.floor(y * self.levels).clamp(0, self.levels - 1)
        return y

    def _conditioning(
        self, n: int, y: Tensor | None, device, check_range: bool = True
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(base mean, base log-scale, the flow's context) for the labels or contexts ``y``;
        Nones for an unconditional model."""
        y = self.condition(n, y, device, check_range)
        if y is None:
            return None, None, None
        if self.num_classes is not None:
            return self.class_loc[y], self.class_log_scale[y], None
        h = self.context_embedding(y)
        loc, log_scale = self.context_base(h).chunk(2, dim=1)
        shape = (len(h), *self.event_shape)
        flow_context = h if self.flow_takes_context else None
        return loc.reshape(shape), log_scale.reshape(shape), flow_context

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        loc, log_scale, context = self._conditioning(len(x), y, x.device, check_range=False)
        u, logdet = self.preprocess(x)
        z, ld = self.flow(u, context)
        if loc is None:
            return self.base.log_prob(z) + logdet + ld
        # z ~ N(loc, exp(log_scale)^2): the standardised z under N(0, I), minus the scales
        log_scale = full_precision(log_scale)
        standard = (z - loc) * torch.exp(-log_scale)
        base = self.base.log_prob(standard) - log_scale.flatten(1).sum(1)
        return base + logdet + ld

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        loc, log_scale, context = self._conditioning(n, y, next(self.parameters()).device)
        z = self.base.sample(n, temperature)
        if loc is not None:
            z = loc + torch.exp(log_scale) * z
        return self.decode(z, context)

    @torch.no_grad()
    def data_box_mass(self, n: int, batch_size: int = 500) -> float:
        """The share of the model's mass on the data box: of ``n`` samples, the fraction whose
        continuous value (before the floor to discrete levels) lies in [0, 1)^D.

        Mass outside the box belongs to no image; it is a looseness of the reported bpd that
        the preprocessing decides (a logit with alpha > 0 maps the box to a bounded one).
        Only for discrete data, where the box is defined.
        """
        if not self.levels:
            raise ValueError("data_box_mass needs discrete data (levels)")
        inside = 0
        for start in range(0, n, batch_size):
            y, _ = self.flow.inverse(self.base.sample(min(batch_size, n - start)))
            if self.logit is not None:
                y, _ = self.logit.inverse(y)
            flat = y.reshape(len(y), -1)
            inside += int(((flat >= 0) & (flat < 1)).all(dim=1).sum())
        return inside / n

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Data -> latent z (bin centres, no dequantization noise)."""
        y, _ = self.preprocess(x, noise=False)
        return self.flow(y)[0]

    @torch.no_grad()
    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Latent z -> data (``context``: the embedded context of a conditional flow)."""
        y, _ = self.flow.inverse(z, context)
        return self.postprocess(y)

    def set_data_standardization(
        self,
        loc: Tensor | None,
        scale: Tensor | None,
        context_loc: Tensor | None = None,
        context_scale: Tensor | None = None,
    ) -> None:
        """Continuous data: the flow sees (x - loc) / scale, its log-det counted; a
        conditional flow standardises its context likewise (no log-det: c is given)."""
        if loc is not None:
            if self.standardize is None:
                raise ValueError("only a flow of continuous data takes a standardisation")
            self.standardize.set(loc, scale)
        if context_loc is not None and self.context_features is not None:
            self.context_embedding.set_standardization(context_loc, context_scale)

    @torch.no_grad()
    def initialize(self, batch: Tensor, y: Tensor | None = None) -> None:
        """One forward pass in training mode runs every data-dependent init (ActNorm); a
        conditional flow needs the batch's labels or contexts ``y``."""
        was_training = self.training
        self.train()
        self.log_prob(batch, y)
        self.train(was_training)
