"""The one interface every model family implements."""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn


def check_num_classes(num_classes) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"model.num_classes must be null or an integer >= 2, got {num_classes}")
    return num_classes


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

    @staticmethod
    def check_config(model_cfg) -> None:
        """Raise ValueError (one sentence) for settings the constructor would reject; called on
        the composed config before any run directory exists. By default: model.num_classes."""
        check_num_classes(model_cfg.get("num_classes"))

    def labels(self, n: int, y: Tensor | None, device, check_range: bool = True) -> Tensor | None:
        """The (n,) labels a call conditions on: None for an unconditional model; checked
        against ``num_classes`` (one sentence) otherwise. ``check_range=False`` skips the
        range check, which reads the labels on the host: the training and evaluation loops
        pass labels checked when the data was loaded, and must not sync on every batch."""
        if self.num_classes is None:
            if y is not None:
                raise ValueError(
                    f"{type(self).__name__} is not class-conditional (train it with "
                    "model.num_classes=K to condition on labels)"
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
        """log p(x), or log p(x | y) when labels ``y`` are given (conditional models only)."""
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

    @torch.no_grad()
    def initialize(self, batch: Tensor) -> None:
        """Data-dependent initialisation (ActNorm); done once, before any wrapper."""
