"""The one interface every model family implements."""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn


def check_context_features(context_features) -> int | None:
    if context_features is None:
        return None
    if (
        isinstance(context_features, bool)
        or not isinstance(context_features, int)
        or context_features < 1
    ):
        raise ValueError(
            f"model.context_features must be null or a positive integer, got {context_features}"
        )
    return context_features


def check_num_classes(num_classes) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"model.num_classes must be null or an integer >= 2, got {num_classes}")
    return num_classes


def check_one_condition(num_classes, context_features) -> None:
    """A model is conditioned on a class or on a context vector, not both."""
    if num_classes is not None and context_features is not None:
        raise ValueError(
            "model.num_classes and model.context_features both condition the model; a "
            "class is one kind of context: use one of them"
        )


@dataclass
class Output:
    """What ``GenerativeModel.forward`` returns: the loss to minimise and batch-mean metrics."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class GenerativeModel(nn.Module, metaclass=ABCMeta):
    """A generative model of data with event shape ``event_shape``.

    ``forward(x)`` is the training objective (so DDP and ``torch.compile`` see it);
    ``log_prob(x)`` is log p(x) in nats per example for the data as the dataset gives it
    (discrete levels for images); ``evaluate(x)`` returns per-example metrics for the
    evaluation protocol, summed over examples by the engine.

    What the rest of genflow may ask of a model is declared here and nowhere else: the
    capabilities below (class attributes a family overrides), ``levels`` and ``iw_samples``
    (instance attributes), and the methods. The CLI checks a config against the capabilities
    before any work; the tasks read them instead of probing for attributes.
    """

    # the data must be images (C, H, W)
    image_only: ClassVar[bool] = False
    # the data must be discrete (dataset.levels set): the model is a distribution over levels
    discrete_only: ClassVar[bool] = False
    # the family takes a model/posterior config group (VAEs)
    takes_posterior: ClassVar[bool] = False
    # encode(x) and decode(z) exist: data <-> a latent space one can interpolate in
    can_encode: ClassVar[bool] = False
    # the per-example metrics evaluate(x) returns (what trainer.monitor may pick)
    eval_metrics: ClassVar[tuple[str, ...]] = ("nll", "bpd")
    # the family can be conditioned on a context vector per example (model.context_features)
    takes_context: ClassVar[bool] = False

    def __init__(self, event_shape: tuple[int, ...], levels: int | None = None):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_dims = math.prod(self.event_shape)
        # values per dimension of discrete data (x in [0, levels)); None: continuous data
        self.levels: int | None = None if levels is None else int(levels)
        # importance samples behind log_prob when it is a bound (VAEs); None: log_prob is exact
        self.iw_samples: int | None = None
        # classes of a class-conditional model (None: unconditional, no labels anywhere)
        self.num_classes: int | None = None
        # width of the context vector of a model of p(x | c) (None: no context)
        self.context_features: int | None = None

    @property
    def conditioned_on(self) -> str | None:
        """What the second argument of forward, log_prob, evaluate and sample is: ``class``
        (an integer label per example), ``context`` (a vector per example) or None."""
        if self.num_classes is not None:
            return "class"
        if self.context_features is not None:
            return "context"
        return None

    def condition(
        self, n: int, c: Tensor | None, device, check_range: bool = True
    ) -> Tensor | None:
        """The (n,) class labels or (n, context_features) context vectors a call conditions
        on, checked (one sentence); None for an unconditional model. One context (or label)
        for all n examples may be given alone."""
        if self.context_features is None:
            return self.labels(n, c, device, check_range)
        if c is None:
            raise ValueError(
                f"this {type(self).__name__} is a density conditioned on a context of "
                f"{self.context_features} values (p(x | c)): pass the context"
            )
        c = torch.as_tensor(c, device=device)
        if not c.is_floating_point():
            c = c.float()
        if c.dim() == 1 and c.shape[0] == self.context_features:
            c = c.unsqueeze(0)
        if c.dim() != 2 or c.shape[1] != self.context_features:
            raise ValueError(
                f"the context has shape {tuple(c.shape)}, but this {type(self).__name__} takes "
                f"{self.context_features} values per example (a context of shape "
                f"({n}, {self.context_features}) or ({self.context_features},))"
            )
        if len(c) == 1 and n != 1:
            c = c.expand(n, -1)
        if len(c) != n:
            raise ValueError(f"{len(c)} contexts for {n} examples")
        return c

    @staticmethod
    def check_config(model_cfg) -> None:
        """Raise ValueError (one sentence) for settings the constructor would reject; called on
        the composed config before any run directory exists. By default: model.num_classes
        and model.context_features."""
        check_num_classes(model_cfg.get("num_classes"))
        check_context_features(model_cfg.get("context_features"))
        if model_cfg.get("num_classes") is not None and model_cfg.get("context_features"):
            raise ValueError(
                "model.num_classes and model.context_features both condition the model; a "
                "class is one kind of context: use one of them"
            )

    def labels(self, n: int, y: Tensor | None, device, check_range: bool = True) -> Tensor | None:
        """The (n,) labels a call conditions on: None for an unconditional model; checked
        against ``num_classes`` (one sentence) otherwise. ``check_range=False`` skips the
        range check, which reads the labels on the host: the training and evaluation loops
        pass labels checked when the data was loaded, and must not sync on every batch."""
        if self.num_classes is None:
            if y is not None:
                raise ValueError(
                    f"{type(self).__name__} is not conditional (train it with "
                    "model.num_classes=K to condition on labels, or on a dataset with context "
                    "columns to condition on a context)"
                )
            return None
        if y is None:
            raise ValueError(
                f"this {type(self).__name__} is class-conditional (model.num_classes="
                f"{self.num_classes}): pass the class labels y"
            )
        y = torch.as_tensor(y, device=device).long().reshape(-1)
        if len(y) == 1 and n != 1:
            y = y.expand(n)
        if len(y) != n or (check_range and bool(((y < 0) | (y >= self.num_classes)).any())):
            raise ValueError(
                f"class labels must be {n} integers in [0, {self.num_classes}); got "
                f"{y.tolist()[:8]}{'...' if len(y) > 8 else ''}"
            )
        return y

    def conditional_log_prob(self, x: Tensor, y: Tensor | None) -> Tensor:
        """log p(x), or log p(x | y) when labels or contexts ``y`` are given (conditional
        models only)."""
        return self.log_prob(x) if y is None else self.log_prob(x, y)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Output:
        nll = -self.conditional_log_prob(x, y)
        bpd = self.bpd(nll)
        loss = bpd.mean()
        return Output(loss=loss, metrics={"nll": nll.mean().detach(), "bpd": bpd.mean().detach()})

    @abstractmethod
    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats, shape (B,), for x as the dataset gives it."""

    @abstractmethod
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` draws in data units: integers in [0, levels) for discrete data."""

    def encode(self, x: Tensor) -> Tensor:
        """Data -> latent (only where ``can_encode``)."""
        raise NotImplementedError(f"{type(self).__name__} has no encoder")

    def decode(self, z: Tensor) -> Tensor:
        """Latent -> data in data units (only where ``can_encode``)."""
        raise NotImplementedError(f"{type(self).__name__} has no decoder")

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example metrics (shape (B,) each); the engine sums them and divides by N.
        ``y``: class labels, for a class-conditional model only."""
        nll = -self.conditional_log_prob(x, y)
        return {"nll": nll, "bpd": self.bpd(nll)}

    def bpd(self, nats: Tensor) -> Tensor:
        """Nats per example -> bits per dimension of the data."""
        return nats / (self.num_dims * math.log(2))

    def set_training_step(self, step: int) -> None:
        """The trainer calls this before every training step; schedules (KL warm-up) read it."""

    @torch.no_grad()
    def pictures(self, x: Tensor) -> dict[str, tuple]:
        """Extra image grids beside the samples, from a batch of validation data ``x``:
        name -> (images (N, C, H, W) in data units, images per row[, a caption saying what
        the rows and columns are]). None by default."""
        return {}

    def latent_points(self, x: Tensor) -> Tensor | None:
        """2-D latent codes (N, 2) of a batch for a scatter picture; None: no 2-D latent."""
        return None

    def set_data_standardization(self, loc: Tensor, scale: Tensor) -> None:
        """A table's standardisation from its training split (loc, scale per column). Flows of
        continuous data run on (x - loc) / scale with the log-det counted; other models ignore
        it (their likelihoods are of the data as given either way)."""

    @torch.no_grad()
    def initialize(self, batch: Tensor, y: Tensor | None = None) -> None:
        """Data-dependent initialisation (ActNorm); done once, before any wrapper. ``y``: the
        batch's labels or contexts, for a conditional model."""
