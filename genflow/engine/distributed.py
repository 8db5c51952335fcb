"""Distributed data parallel training on torch.distributed: who is who, and the collectives.

Three ways a run becomes several processes, all ending in the same training code:

- ``torchrun ... -m genflow train device=ddp``: every rank starts genflow; rank 0 composes
  the config and makes the one run directory, the other ranks follow it (``follow``).
- ``genflow train device=ddp device.nproc_per_node=N``: genflow composes the config once,
  then starts N workers with torch's elastic launcher (what torchrun runs), ``spawn_workers``.
- a SLURM job from the submitit launcher runs one genflow task on its node, which starts
  the workers as above.

Rank 0 alone logs, samples and writes checkpoints; evaluation is sharded over the ranks and
its sums and counts are all-reduced, so every rank takes the same decisions.
"""

from __future__ import annotations

import datetime
import logging
import os
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from genflow.errors import GenflowError

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        """In place, across ranks (a sum unless ``op`` says otherwise); a no-op alone."""
        if self.enabled:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj=None):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ by at most one)."""
        start = n * self.rank // self.world_size
        return slice(start, n * (self.rank + 1) // self.world_size)


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or genflow's own launcher) started as one rank."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def env_context() -> DistContext:
    return DistContext(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def accelerator(device_cfg) -> str:
    """cpu or cuda: what each DDP rank computes on."""
    kind = str(device_cfg.get("accelerator") or "auto")
    if kind not in ACCELERATORS:
        raise GenflowError(f"unknown device.accelerator '{kind}'; valid: {', '.join(ACCELERATORS)}")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise GenflowError(
            "device.accelerator=cuda was asked for but no CUDA GPU is available; "
            "use device.accelerator=cpu (gloo)"
        )
    return kind


def join(device_cfg) -> tuple[DistContext, torch.device]:
    """Join the process group that the launcher's environment describes (once per process)
    and return this rank's context and device: cuda:LOCAL_RANK with nccl, or the CPU with
    gloo. ``device.backend`` overrides the backend."""
    ctx = env_context()
    kind = accelerator(device_cfg)
    if kind == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise GenflowError(
                f"local rank {ctx.local_rank} has no GPU: this node has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        torch.cuda.set_device(ctx.local_rank)
        device = torch.device("cuda", ctx.local_rank)
    else:
        device = torch.device("cpu")
    if ctx.enabled and not dist.is_initialized():
        backend = str(device_cfg.get("backend") or ("nccl" if kind == "cuda" else "gloo"))
        timeout = datetime.timedelta(minutes=float(device_cfg.get("timeout_min") or 30))
        dist.init_process_group(
            backend=backend,
            timeout=timeout,
            device_id=device if kind == "cuda" else None,
        )
    return ctx, device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Rank 0's parameters and buffers on every rank: after a data-dependent initialisation
    (ActNorm) that rank 0 alone ran, before the DDP wrapper is built."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def max_parameter_difference(module: nn.Module, ctx: DistContext) -> float:
    """The largest |p_rank - p_rank0| over every parameter and rank: 0.0 while the replicas
    are in step, as DDP promises; anything else means the ranks have diverged."""
    if not ctx.enabled:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    worst = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst.item())


def micro_batch_seed(seed: int, index: int) -> int:
    """The RNG seed of global micro-batch ``index``: every random draw of training (noise,
    dropout, binarization) is a pure function of (seed, index), so N ranks reproduce one
    process accumulating N micro-batches, and a resumed run reproduces an uninterrupted one."""
    return zlib.crc32(f"{seed}/{index}".encode()) | zlib.crc32(f"{index}/{seed}".encode()) << 32
