"""Model presets: every model is a GenerativeModel."""

from genflow.models.base import GenerativeModel, Output
from genflow.models.flow import FlowModel
from genflow.models.realnvp import RealNVP

__all__ = ["FlowModel", "GenerativeModel", "Output", "RealNVP"]
