"""Pick the device a run uses."""

from __future__ import annotations

import os

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


def describe_hardware(device: torch.device) -> str:
    """One line naming the machine a figure came from: the GPU (and its memory) or the CPU
    model and the threads torch uses, and the torch version."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        what = f"{_cpu_model()}, {torch.get_num_threads()} threads"
    return f"{what}, torch {torch.__version__}"


def _cpu_model() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def make_deterministic() -> None:
    """``trainer.deterministic``: PyTorch's deterministic algorithms where it has them (each
    op without one warns and runs as it is), cuDNN without autotuning, and the cuBLAS
    workspace setting its deterministic matmuls need (before the first one runs)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
