"""Decoder likelihoods p(x|z) of VAEs, for data as the dataset gives it.

Every likelihood reads decoder parameters of shape (B, P, H, W) laid out on the image
shape (C, H, W) of the data (vectors (D,) are laid out as (1, D, 1)) and returns log P(x|z)
per example in nats. For discrete data the result is a probability of the discrete value:
the Gaussian dequantizes (a uniform draw u, y = (x + u) / levels) and counts the scaling's
-D log(levels), so E_u log p(y|z) - D log levels <= log P(x|z) and every bound built on it
stays a bound on the discrete data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.distributions import discretized_logistic

LIKELIHOODS = ("bernoulli", "categorical", "gaussian", "logistic_mixture")


class Likelihood(nn.Module):
    """p(x | params). ``num_channels`` parameter channels per data channel layout (C, H, W)."""

    def __init__(self, image_shape: tuple[int, int, int], levels: int | None):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.levels = levels

    @property
    def num_channels(self) -> int:
        raise NotImplementedError

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log P(x | params) per example, (B,); x in the layout (B, C, H, W)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """E[x | params] in data units (levels 0..L-1 as floats), for pictures."""
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Binary pixels: one logit per pixel."""

    @property
    def num_channels(self) -> int:
        return self.image_shape[0]

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        nll = F.binary_cross_entropy_with_logits(params, x.to(params.dtype), reduction="none")
        return -nll.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params)).long()


class Categorical(Likelihood):
    """A softmax over the ``levels`` values of each pixel and channel (digits: 17 levels)."""

    @property
    def num_channels(self) -> int:
        return self.image_shape[0] * self.levels

    def _log_probs(self, params: Tensor) -> Tensor:
        b, _, h, w = params.shape
        return F.log_softmax(params.view(b, self.image_shape[0], self.levels, h, w), dim=2)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        picked = self._log_probs(params).gather(2, x.long().unsqueeze(2)).squeeze(2)
        return picked.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        values = torch.arange(self.levels, dtype=params.dtype, device=params.device)
        return (self._log_probs(params).exp() * values.view(1, 1, -1, 1, 1)).sum(2)

    def sample(self, params: Tensor) -> Tensor:
        probs = self._log_probs(params).exp().movedim(2, -1)
        return torch.distributions.Categorical(probs=probs).sample()


class Gaussian(Likelihood):
    """A diagonal Gaussian with a learned per-pixel scale (``scale=None``) or a fixed one.

    Discrete data: the mean is a sigmoid on [0, 1] where y = (x + u) / levels lives, and the
    log-probability is of the dequantized y minus D log(levels) (see the module docstring).
    Continuous data (levels None): the mean is unconstrained and x is scored as it is.
    """

    def __init__(self, image_shape, levels, scale: float | None = None):
        super().__init__(image_shape, levels)
        if scale is not None and not scale > 0:
            raise ValueError(f"model.gaussian_scale must be positive or 'learned', got {scale}")
        self.scale = scale

    @property
    def num_channels(self) -> int:
        return self.image_shape[0] * (1 if self.scale is not None else 2)

    def _mean_and_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        c = self.image_shape[0]
        mean = params[:, :c]
        if self.levels is not None:
            mean = torch.sigmoid(mean)
        if self.scale is not None:
            return mean, torch.full_like(mean, math.log(self.scale))
        return mean, params[:, c:].clamp(-9.0, 5.0)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = self._mean_and_log_scale(params)
        y = x.to(params.dtype)
        jacobian = 0.0
        if self.levels is not None:
            y = (y + torch.rand_like(y)) / self.levels
            jacobian = -math.log(self.levels) * y[0].numel()
        log_density = -0.5 * ((y - mean) * torch.exp(-log_scale)).pow(2) - log_scale
        return (log_density - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) + jacobian

    def mean(self, params: Tensor) -> Tensor:
        mean, _ = self._mean_and_log_scale(params)
        return mean * self.levels - 0.5 if self.levels is not None else mean

    def sample(self, params: Tensor) -> Tensor:
        mean, log_scale = self._mean_and_log_scale(params)
        y = mean + torch.exp(log_scale) * torch.randn_like(mean)
        if self.levels is None:
            return y
        return (y * self.levels).floor().clamp(0, self.levels - 1).long()


class LogisticMixture(Likelihood):
    """The discretized logistic mixture of PixelCNN++ per pixel (8-bit images)."""

    def __init__(self, image_shape, levels, num_mixtures: int = 5):
        super().__init__(image_shape, levels)
        if num_mixtures < 1:
            raise ValueError(f"model.num_mixtures must be >= 1, got {num_mixtures}")
        self.num_mixtures = int(num_mixtures)

    @property
    def num_channels(self) -> int:
        return discretized_logistic.num_parameters(self.image_shape[0], self.num_mixtures)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return discretized_logistic.log_prob(params, x, self.levels, self.num_mixtures)

    def mean(self, params: Tensor) -> Tensor:
        """The mixture-weighted component means (ignoring the channel coupling)."""
        k, c = self.num_mixtures, self.image_shape[0]
        weights = torch.softmax(params[:, :k], dim=1).unsqueeze(1)
        rest = params[:, k:].reshape(params.shape[0], -1, k, *params.shape[2:])
        centre = (rest[:, :c] * weights).sum(2).clamp(-1, 1)
        return (centre + 1) * (self.levels - 1) / 2

    def sample(self, params: Tensor) -> Tensor:
        return discretized_logistic.sample(
            params, self.levels, self.num_mixtures, self.image_shape[0]
        )


def default_likelihood(levels: int | None) -> str:
    """bernoulli for binary data, categorical up to 64 levels, logistic_mixture above, and
    gaussian for continuous data."""
    if levels is None:
        return "gaussian"
    if levels == 2:
        return "bernoulli"
    return "categorical" if levels <= 64 else "logistic_mixture"


def build_likelihood(
    name: str,
    image_shape: tuple[int, int, int],
    levels: int | None,
    num_mixtures: int = 5,
    gaussian_scale: float | str | None = "learned",
) -> Likelihood:
    if name == "auto":
        name = default_likelihood(levels)
    if name not in LIKELIHOODS:
        raise ValueError(
            f"model.likelihood={name} is not a likelihood; valid: auto, {', '.join(LIKELIHOODS)}"
        )
    if name != "gaussian" and levels is None:
        raise ValueError(
            f"model.likelihood={name} needs discrete data but the dataset is continuous "
            "(dataset.levels is null); use model.likelihood=gaussian"
        )
    if name == "bernoulli":
        if levels != 2:
            raise ValueError(
                f"model.likelihood=bernoulli needs binary data (dataset.levels=2), but the "
                f"dataset has {levels} levels; use categorical, gaussian or logistic_mixture"
            )
        return Bernoulli(image_shape, levels)
    if name == "categorical":
        return Categorical(image_shape, levels)
    if name == "logistic_mixture":
        return LogisticMixture(image_shape, levels, num_mixtures)
    scale = None
    if gaussian_scale not in (None, "learned"):
        try:
            scale = float(gaussian_scale)
        except (TypeError, ValueError):
            raise ValueError(
                f"model.gaussian_scale={gaussian_scale} must be 'learned' or a positive number"
            ) from None
    return Gaussian(image_shape, levels, scale)
