"""Pick the device a run uses."""

from __future__ import annotations

import torch

from genflow.errors import GenflowError

DEVICE_TYPES = ("auto", "cpu", "cuda", "ddp")


def resolve_device(cfg) -> torch.device:
    """The device of a single-process run; for device=ddp, that of its accelerator."""
    kind = cfg.type
    if kind not in DEVICE_TYPES:
        raise GenflowError(f"unknown device.type '{kind}'; valid types: {', '.join(DEVICE_TYPES)}")
    if kind == "ddp":
        from genflow.engine.distributed import accelerator

        return torch.device(accelerator(cfg))
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise GenflowError(
            "device=cuda was asked for but no CUDA GPU is available; use device=cpu or device=auto"
        )
    return torch.device(kind)
