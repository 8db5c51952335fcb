"""Flow posteriors for VAEs: q(z_K|x) from a diagonal Gaussian q(z_0|x) and K amortised steps.

Each builder returns a ``Compose`` whose ``forward`` maps z_0 -> z_K (noise -> latent) given
the encoder's context, with log|det dz_K/dz_0|, so log q(z_K|x) = log q(z_0|x) - logdet.
The Hydra group ``model/posterior`` names one builder by ``_target_``.
"""

from __future__ import annotations

from genflow.bijections.autoregressive import MaskedAffineAutoregressive
from genflow.bijections.base import Compose
from genflow.bijections.householder import HouseholderReflection
from genflow.bijections.planar import Planar
from genflow.bijections.radial import Radial
from genflow.bijections.rational_quadratic import check_spline, params_per_coordinate
from genflow.bijections.spline import MaskedSplineAutoregressive
from genflow.bijections.sylvester import Sylvester
from genflow.nn.made import MADE


def _check_num_flows(num_flows: int) -> int:
    if int(num_flows) < 1:
        raise ValueError(f"model.posterior.num_flows must be a positive integer, got {num_flows}")
    return int(num_flows)


def gaussian(features: int, context_features: int) -> Compose:
    """The baseline: the diagonal Gaussian itself, no flow steps (KL in closed form)."""
    return Compose([])


def planar(features: int, context_features: int, num_flows: int = 4) -> Compose:
    """Rezende & Mohamed, 2015."""
    n = _check_num_flows(num_flows)
    return Compose(Planar(features, context_features) for _ in range(n))


def radial(features: int, context_features: int, num_flows: int = 4) -> Compose:
    """Rezende & Mohamed, 2015."""
    n = _check_num_flows(num_flows)
    return Compose(Radial(features, context_features) for _ in range(n))


def householder(features: int, context_features: int, num_flows: int = 4) -> Compose:
    """Tomczak & Welling, 2016: volume-preserving reflections of a diagonal Gaussian."""
    n = _check_num_flows(num_flows)
    return Compose(HouseholderReflection(features, context_features) for _ in range(n))


def _made_steps(
    features: int,
    context_features: int,
    num_flows: int,
    hidden_features: int,
    num_layers: int,
    outputs_per_feature: int,
    step,
) -> Compose:
    """The inverse autoregressive posteriors' stack: ``num_flows`` steps, each ``step(made)``
    of a MADE with ``outputs_per_feature`` outputs per feature that reads the encoder's
    context, the order reversed between steps (seeded by the step's index)."""
    n = _check_num_flows(num_flows)
    steps = []
    for i in range(n):
        made = MADE(
            features,
            hidden_features,
            num_layers,
            outputs_per_feature,
            "natural" if i % 2 == 0 else "reversed",
            context_features=context_features,
            seed=i,
        )
        steps.append(step(made))
    return Compose(steps)


def iaf(
    features: int,
    context_features: int,
    num_flows: int = 4,
    hidden_features: int = 256,
    num_layers: int = 1,
    gated: bool = False,
) -> Compose:
    """Kingma et al., 2016: MADE-driven affine steps, the context entering each MADE, the
    order reversed between steps. The one-pass direction of the MAF layer is the noise ->
    latent map here, so sampling z_K (and scoring it) is one pass per step. ``gated``: the
    paper's LSTM-type update z = g * z + (1 - g) * m with a sigmoid gate g (log-det
    sum log g) instead of the soft-clamped affine step."""
    if not isinstance(gated, bool):
        raise ValueError(f"model.posterior.gated must be true or false, got {gated}")
    scale = "gated" if gated else "softclamp"
    return _made_steps(
        features,
        context_features,
        num_flows,
        hidden_features,
        num_layers,
        2,
        lambda made: MaskedAffineAutoregressive(made, scale=scale),
    )


def nsf(
    features: int,
    context_features: int,
    num_flows: int = 4,
    hidden_features: int = 256,
    num_layers: int = 1,
    num_bins: int = 8,
    tail_bound: float = 3.0,
) -> Compose:
    """Spline inverse autoregressive flow (Durkan et al., 2019, RQ-NSF (AR) as a posterior):
    the IAF's steps with a monotone rational-quadratic spline of ``num_bins`` bins on
    [-tail_bound, tail_bound] (identity outside) in place of the affine map, the encoder's
    context entering each MADE, the order reversed between steps. One pass per step from
    noise to latent, so drawing z_K and scoring it cost no inversion."""
    check_spline(num_bins, tail_bound, "model.posterior")
    return _made_steps(
        features,
        context_features,
        num_flows,
        hidden_features,
        num_layers,
        params_per_coordinate(num_bins),
        lambda made: MaskedSplineAutoregressive(made, num_bins, tail_bound),
    )


def sylvester(
    features: int,
    context_features: int,
    num_flows: int = 4,
    variant: str = "orthogonal",
    num_ortho_vectors: int | None = None,
    num_householder: int = 8,
) -> Compose:
    """van den Berg et al., 2018. Triangular steps alternate Q = I and Q = reversal."""
    n = _check_num_flows(num_flows)
    return Compose(
        Sylvester(
            features,
            context_features,
            variant,
            num_ortho_vectors,
            num_householder,
            reverse=i % 2 == 1,
        )
        for i in range(n)
    )


# what a model.posterior config may name (genflow.trust checks stored configs against it)
BUILDERS = (gaussian, planar, radial, householder, iaf, nsf, sylvester)
