"""Priors p(z) for the VAE: the standard normal and three learnable ones.

Each prior has ``log_prob(z, encode)`` (B, Dz) -> (B,) and ``sample(n, temperature, encode)``.
``encode`` maps encoder inputs (B, C, H, W), already in the encoder's scale, to the mean and
log-scale of the diagonal Gaussian q(z_0|x); only the VampPrior uses it. ``standard`` tells
the VAE the KL of a Gaussian posterior has a closed form; for every other prior the VAE uses
the Monte Carlo estimate log q(z|x) - log p(z).

The Hydra group ``model/prior`` names one class by ``_target_``. References: Tomczak &
Welling, 2018, "VAE with a VampPrior", arXiv:1705.07120; Tomczak, "Deep Generative
Modeling" (2022), chapter 4.4 (mixture, VampPrior and flow priors on digits).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from genflow.bijections.autoregressive import MaskedAffineAutoregressive
from genflow.bijections.base import Bijection, Compose
from genflow.bijections.coupling import AffineCoupling, alternating_mask
from genflow.bijections.permutation import Permutation
from genflow.bijections.rational_quadratic import check_spline
from genflow.bijections.spline import SplineCoupling
from genflow.distributions.normal import StandardNormal
from genflow.nn.made import MADE
from genflow.nn.mlp import MLP
from genflow.numeric import full_precision

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
FLOW_PRIOR_KINDS = ("realnvp", "maf", "nsf")
PRIOR_FITS = ("elbo", "aggregate")

Encode = Callable[[Tensor], tuple[Tensor, Tensor]]


def diagonal_mixture_log_prob(z: Tensor, logits: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log sum_k w_k N(z; mean_k, diag(exp(log_scale_k))^2), w = softmax(logits).

    z (B, D); logits (K,); mean and log_scale (K, D). Computed per pair, then a log-sum-exp
    over the K components.
    """
    z = full_precision(z)
    eps = (z.unsqueeze(1) - mean) * torch.exp(-log_scale)  # (B, K, D)
    per_component = (-0.5 * eps.pow(2) - log_scale - HALF_LOG_2PI).sum(2)
    return torch.logsumexp(per_component + torch.log_softmax(logits, 0), dim=1)


def diagonal_mixture_sample(
    n: int, logits: Tensor, mean: Tensor, log_scale: Tensor, temperature: float
) -> Tensor:
    """Pick a component by its weight, then mean + temperature * scale * N(0, I)."""
    k = torch.multinomial(torch.softmax(logits.detach().float(), 0), n, replacement=True)
    noise = torch.randn(n, mean.shape[1], dtype=mean.dtype, device=mean.device)
    return mean[k] + temperature * torch.exp(log_scale[k]) * noise


class Prior(nn.Module):
    """A density over R^features with ``log_prob`` and ``sample``.

    ``fit`` says how a learnable prior trains: ``elbo`` (with the encoder and decoder, by the
    ELBO, so it also shapes the posterior) or ``aggregate`` (by maximum likelihood of the
    posterior's codes, detached, while the encoder and decoder train against N(0, I): the
    prior follows the aggregate posterior q(z) = E_x q(z|x) without changing it, and the
    bounds are then evaluated with it).
    """

    standard = False
    # why ``fit=aggregate`` cannot apply to this prior (None: it can)
    no_aggregate_fit: str | None = None

    def __init__(self, features: int, fit: str = "elbo"):
        super().__init__()
        self.features = int(features)
        if fit not in PRIOR_FITS:
            raise ValueError(f"model.prior.fit must be one of {', '.join(PRIOR_FITS)}, got {fit}")
        if fit == "aggregate" and self.no_aggregate_fit:
            raise ValueError(
                "model.prior.fit=aggregate needs a prior with its own parameters "
                f"(model/prior=mog or flow); {self.no_aggregate_fit}"
            )
        self.fit = fit

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, temperature: float = 1.0, encode: Encode | None = None) -> Tensor:
        raise NotImplementedError


class StandardPrior(Prior):
    """p(z) = N(0, I): the VAE's default, the KL of a Gaussian posterior in closed form."""

    standard = True
    no_aggregate_fit = "the standard normal has nothing to fit"

    def __init__(self, features: int, fit: str = "elbo"):
        super().__init__(features, fit)
        self.normal = StandardNormal((int(features),))

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        return self.normal.log_prob(z)

    def sample(self, n: int, temperature: float = 1.0, encode: Encode | None = None) -> Tensor:
        return self.normal.sample(n, temperature)


class MixturePrior(Prior):
    """A learned mixture of K diagonal Gaussians: means, log-scales and weights are trained
    with the VAE (means start at N(0, 1) draws, scales at 1, weights equal)."""

    def __init__(self, features: int, num_components: int = 16, seed: int = 0, fit: str = "elbo"):
        super().__init__(features, fit)
        num_components = _check_components(num_components)
        generator = torch.Generator().manual_seed(int(seed))
        self.mean = nn.Parameter(torch.randn(num_components, features, generator=generator))
        self.log_scale = nn.Parameter(torch.zeros(num_components, features))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        return diagonal_mixture_log_prob(
            z,
            full_precision(self.logits),
            full_precision(self.mean),
            full_precision(self.log_scale),
        )

    def sample(self, n: int, temperature: float = 1.0, encode: Encode | None = None) -> Tensor:
        return diagonal_mixture_sample(n, self.logits, self.mean, self.log_scale, temperature)


class VampPrior(Prior):
    """p(z) = sum_k w_k q(z_0 | u_k): the posterior's Gaussian at K learned pseudo-inputs u_k
    (Tomczak & Welling, 2018), with learned weights w = softmax(logits) (equal at the start,
    as in the paper). The pseudo-inputs live where the encoder reads images (values in
    [0, 1]; they start as uniform noise, and at training images once ``initialize`` sees the
    first batch) and are trained with the VAE.

    With a flow posterior the components are the flow's base Gaussians q(z_0 | u_k), not
    the flowed q(z_K | u_k) (planar, radial and Sylvester steps cannot be inverted to score
    z); the prior is still a normalised mixture, so every bound stays a bound.
    """

    no_aggregate_fit = (
        "the VampPrior's components come from the encoder, which that fit leaves alone"
    )

    def __init__(
        self,
        features: int,
        event_shape: tuple[int, ...],
        num_components: int = 64,
        seed: int = 0,
        fit: str = "elbo",
        num_bins: int = 8,
        tail_bound: float = 3.0,
    ):
        super().__init__(features, fit)
        from genflow.models.vae import image_layout

        num_components = _check_components(num_components)
        generator = torch.Generator().manual_seed(int(seed))
        shape = image_layout(tuple(event_shape))
        self.pseudo_inputs = nn.Parameter(torch.rand(num_components, *shape, generator=generator))
        self.logits = nn.Parameter(torch.zeros(num_components))

    @torch.no_grad()
    def initialize(self, inputs: Tensor) -> None:
        """Start the pseudo-inputs at training images (encoder scale), cycling through the
        batch when it holds fewer than K; a fresh run's first batch, before training."""
        k = self.pseudo_inputs.shape[0]
        index = torch.arange(k, device=inputs.device) % len(inputs)
        self.pseudo_inputs.copy_(inputs[index].reshape(self.pseudo_inputs.shape))

    def components(self, encode: Encode | None) -> tuple[Tensor, Tensor]:
        if encode is None:
            raise ValueError("the VampPrior needs the VAE's encoder (pass encode=...)")
        mean, log_scale = encode(self.pseudo_inputs)
        return full_precision(mean), full_precision(log_scale)

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        mean, log_scale = self.components(encode)
        return diagonal_mixture_log_prob(z, full_precision(self.logits), mean, log_scale)

    def sample(self, n: int, temperature: float = 1.0, encode: Encode | None = None) -> Tensor:
        mean, log_scale = self.components(encode)
        return diagonal_mixture_sample(n, self.logits, mean, log_scale, temperature)


class FlowPrior(Prior):
    """p(z) = N(f(z); 0, I) |det df/dz|: a flow from the latent space to a standard normal.

    ``kind``: ``realnvp`` (affine couplings on alternating halves, MLP conditioners: both
    directions one pass) or ``maf`` (MADE layers, order reversed between layers: density
    one pass, sampling D passes) or ``nsf`` (rational-quadratic spline couplings of
    ``num_bins`` bins on [-tail_bound, tail_bound], identity tails, on alternating halves:
    both directions one pass). Every layer starts as the identity, so training starts from
    the standard prior.
    """

    def __init__(
        self,
        features: int,
        kind: str = "realnvp",
        num_layers: int = 4,
        hidden_features: int = 128,
        hidden_layers: int = 2,
        seed: int = 0,
        fit: str = "elbo",
        num_bins: int = 8,
        tail_bound: float = 3.0,
    ):
        super().__init__(features, fit)
        if kind not in FLOW_PRIOR_KINDS:
            raise ValueError(
                f"unknown flow prior kind '{kind}'; valid: {', '.join(FLOW_PRIOR_KINDS)}"
            )
        if features < 2:
            raise ValueError(f"a flow prior needs model.latent_features >= 2, got {features}")
        if kind == "nsf":
            check_spline(num_bins, tail_bound, "model.prior")
        layers: list[Bijection] = []
        for i in range(num_layers):
            if kind == "nsf":
                mask = alternating_mask(features, i % 2)
                fixed, out = SplineCoupling.conditioner_sizes(mask, num_bins)
                conditioner = MLP(fixed, out, hidden_features, hidden_layers)
                layers.append(SplineCoupling(mask, conditioner, num_bins, tail_bound))
            elif kind == "realnvp":
                conditioner = MLP(features, 2 * features, hidden_features, hidden_layers)
                layers.append(AffineCoupling(alternating_mask(features, i % 2), conditioner))
            else:
                made = MADE(features, hidden_features, hidden_layers, 2, seed=seed + i)
                layers.append(MaskedAffineAutoregressive(made))
                if i < num_layers - 1:
                    layers.append(Permutation.reverse(features))
        self.flow = Compose(layers)
        self.normal = StandardNormal((int(features),))

    def log_prob(self, z: Tensor, encode: Encode | None = None) -> Tensor:
        noise, logdet = self.flow(z)
        return self.normal.log_prob(noise) + full_precision(logdet)

    def sample(self, n: int, temperature: float = 1.0, encode: Encode | None = None) -> Tensor:
        dtype = next(self.flow.parameters()).dtype
        return self.flow.inverse(self.normal.sample(n, temperature).to(dtype))[0]


def _check_components(num_components: int) -> int:
    if not (isinstance(num_components, int) and num_components >= 1):
        raise ValueError(
            f"model.prior.num_components must be a positive integer, got {num_components}"
        )
    return num_components
