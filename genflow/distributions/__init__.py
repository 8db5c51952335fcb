"""Base distributions and likelihoods."""

from genflow.distributions.normal import StandardNormal

__all__ = ["StandardNormal"]
