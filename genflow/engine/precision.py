"""trainer.precision: fp32, or mixed precision with autocast (bf16; fp16 with a GradScaler).

Only the training forward runs under autocast: the networks compute in bf16/fp16 while
log-dets, base log-probs and likelihoods are reduced in fp32 (``full_precision``), and
validation, the test, ``genflow eval`` and sampling run in fp32, so reported bpd is exact.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 has fp32's exponent range); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
