"""genflow: a command-line experiment runner for deep generative models in PyTorch.

From Python: ``genflow.load_run(path)`` returns a trained run (``genflow.Run``): its model,
config and data, and the evaluation ``genflow eval`` runs. Imported on first use, so
``import genflow`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Run", "load_run", "__version__"]

if TYPE_CHECKING:
    from genflow.api import Run, load_run


def __getattr__(name: str):
    if name in ("Run", "load_run"):
        from genflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'genflow' has no attribute {name!r}")
