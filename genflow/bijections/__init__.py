"""Invertible layers. Each returns ``(out, logdet)`` in both directions."""

from genflow.bijections.base import Bijection, Compose, InverseNotAvailable, Inverted
from genflow.bijections.coupling import AffineCoupling
from genflow.bijections.factor_out import FactorOut
from genflow.bijections.logit import Logit
from genflow.bijections.squeeze import Squeeze

__all__ = [
    "AffineCoupling",
    "Bijection",
    "Compose",
    "FactorOut",
    "InverseNotAvailable",
    "Inverted",
    "Logit",
    "Squeeze",
]
