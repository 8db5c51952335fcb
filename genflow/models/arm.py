"""Autoregressive models over discrete values: exact log-likelihood, sequential sampling."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.models.base import (
    GenerativeModel,
    check_context_features,
    check_num_classes,
    check_one_condition,
)
from genflow.nn.context import ContextEmbedding, check_context_net
from genflow.numeric import full_precision, sum_except_batch


def draw(logits: Tensor, temperature: float) -> Tensor:
    """One categorical draw per row by inverse CDF: exactly one uniform per row, so two
    samplers that compute the same logits in the same order draw the same values."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    u = torch.rand(probs.shape[0], 1, dtype=probs.dtype, device=probs.device)
    return (probs.cumsum(-1) < u).sum(-1).clamp_(max=probs.shape[-1] - 1)


class ClassBias(nn.Module):
    """A learned vector per class for each of several sites of a network (one per layer):
    ``forward(y)`` gives, for labels y of shape (B,), a (B, width) tensor per site. Added to a
    layer's pre-activations it makes the layer class-conditional without touching causality
    (it depends on no pixel). Zero-initialised: every class starts as the unconditional model.
    References: van den Oord et al., 2016, "Conditional Image Generation with PixelCNN
    Decoders", arXiv:1606.05328 (section 2.3: a class embedding in each gated layer).
    """

    def __init__(self, num_classes: int, widths: list[int]):
        super().__init__()
        self.widths = list(widths)
        self.embed = nn.Embedding(num_classes, sum(self.widths))
        nn.init.zeros_(self.embed.weight)

    def forward(self, y: Tensor) -> list[Tensor]:
        return list(self.embed(y).split(self.widths, dim=1))


class ContextBias(nn.Module):
    """``ClassBias`` for a context vector: c standardised (the training split's statistics)
    and optionally embedded (``model.context_net``), then one linear map to every site's
    vector. Zero-initialised like the class vectors, and causal for the same reason: it
    depends on no pixel."""

    def __init__(self, context_features: int, widths: list[int], context_net: dict | None = None):
        super().__init__()
        self.widths = list(widths)
        self.embedding = ContextEmbedding(context_features, **check_context_net(context_net))
        self.project = nn.Linear(self.embedding.out_features, sum(self.widths))
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, c: Tensor) -> list[Tensor]:
        return list(self.project(self.embedding(c)).split(self.widths, dim=1))


class AutoregressiveModel(GenerativeModel):
    """log p(x) = sum_i log p(x_i | x_<i) with a categorical over ``levels`` values.

    The order is given by ``positions()``. Subclasses give ``logits(x)`` of shape
    (B, levels, *event_shape), where the logits at a position depend only on earlier ones.
    No dequantization: nll and bpd are exact. With ``num_classes`` (families that build
    ``class_bias``) the model is p(x | y): ``logits(x, y)``, ``log_prob(x, y)`` and
    ``sample(n, temperature, y)`` take class labels y of shape (B,); with
    ``context_features`` it is p(x | c) and they take context vectors c of shape (B, C) at
    the same sites (a class is the special case of a one-hot context).
    """

    discrete_only = True
    takes_context = True

    def __init__(
        self,
        event_shape: tuple[int, ...],
        levels: int,
        num_classes: int | None = None,
        context_features: int | None = None,
        context_net: dict | None = None,
    ):
        if levels is None or int(levels) < 2:
            raise ValueError(
                f"autoregressive models need discrete data with levels >= 2; got levels={levels}"
            )
        super().__init__(event_shape, levels)
        self.num_classes = check_num_classes(num_classes)
        self.context_features = check_context_features(context_features)
        check_one_condition(self.num_classes, self.context_features)
        self._context_net = context_net

    def class_bias(self, widths: list[int]) -> ClassBias | ContextBias | None:
        """The per-site class (or context) vectors of a conditional model (None when
        unconditional); a family keeps it as ``self.classes`` and reads it through
        ``class_vectors``."""
        self._class_sites = len(widths)
        if self.context_features is not None:
            return ContextBias(self.context_features, widths, self._context_net)
        return None if self.num_classes is None else ClassBias(self.num_classes, widths)

    def set_data_standardization(
        self,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
        context_loc: Tensor | None = None,
        context_scale: Tensor | None = None,
    ) -> None:
        """Discrete data is modelled as given; a context is standardised with its training
        split's statistics (no log-det: it is given)."""
        if context_loc is not None and isinstance(getattr(self, "classes", None), ContextBias):
            self.classes.embedding.set_standardization(context_loc, context_scale)

    def class_vectors(self, y: Tensor | None) -> list[Tensor | None]:
        """Per site, the (B, width) class vectors of labels (or contexts) ``y``, or None at
        every site (none given: an unconditional pass)."""
        return [None] * self._class_sites if y is None else self.classes(y)

    def scale(self, x: Tensor) -> Tensor:
        """Levels -> [-1, 1], the network's input."""
        return x.to(self.dtype) * (2.0 / (self.levels - 1)) - 1.0

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        y = self.condition(len(x), y, x.device, check_range=False)
        logits = self.logits(x) if y is None else self.logits(x, y)
        log_probs = F.log_softmax(full_precision(logits), dim=1)
        return sum_except_batch(log_probs.gather(1, x.long().unsqueeze(1)).squeeze(1))

    def positions(self) -> Iterator[tuple[int, ...]]:
        """Every index of the event, in the model's order: here the flattened (C-order)
        sequence; PixelCNN overrides it with raster order, then R, G, B within a pixel."""
        return itertools.product(*(range(s) for s in self.event_shape))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        return self.sample_naive(n, temperature, y)

    @torch.no_grad()
    def sample_naive(self, n: int, temperature: float = 1.0, y: Tensor | None = None) -> Tensor:
        """Re-run the whole network once per position: the reference sampler."""
        device = next(self.parameters()).device
        y = self.condition(n, y, device)
        x = torch.zeros(n, *self.event_shape, dtype=torch.long, device=device)
        for index in self.positions():
            logits = (self.logits(x) if y is None else self.logits(x, y))[
                (slice(None), slice(None), *index)
            ]
            x[(slice(None), *index)] = draw(logits, temperature)
        return x
