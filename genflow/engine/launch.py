"""Starting the processes of a training run, in one place.

``launch`` runs a task (``task(cfg, run_dir, ctx, device)``, handed in as a callable so this
module imports nothing above the engine) in the way the config and the environment ask: in
this process; as rank 0 of a torchrun job (the other ranks ``follow``); or as
``device.nproc_per_node`` self-launched workers (torch's elastic launcher, what
``torchrun --standalone`` does). Submitit (SLURM) jobs arrive here through Hydra's launcher
plugin as ordinary jobs and go down one of the same roads. Every error class carries its
exit code, and ``exit_code`` alone maps them.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from genflow.engine.device import resolve_device
from genflow.engine.distributed import (
    DistContext,
    accelerator,
    env_context,
    join,
    launched_by_torchrun,
    leave,
)
from genflow.engine.files import check_appendable
from genflow.engine.preemption import Preempted
from genflow.errors import GenflowError

log = logging.getLogger(__name__)

Task = Callable[..., Any]  # task(cfg, run_dir: Path, ctx: DistContext, device) -> result


class WorkerFailed(Exception):
    """The DDP workers stopped with ``exit_code``; rank 0 printed why on stderr."""

    def __init__(self, exit_code: int, message: str):
        self.exit_code = exit_code
        super().__init__(message)


def exit_code(err: BaseException) -> int | None:
    """The exit code an error stands for: 2 for bad input, 128 + signal for a preempted run,
    the workers' own for failed DDP workers; None for anything else (a bug: let it raise)."""
    if isinstance(err, GenflowError):
        return 2
    if isinstance(err, Preempted):
        return err.exit_code
    if isinstance(err, WorkerFailed):
        return err.exit_code or 1
    return None


def report(err: BaseException) -> int | None:
    """Say on stderr what stopped the run (one line) and return its exit code (see
    ``exit_code``); None, and nothing said, for errors that are bugs."""
    code = exit_code(err)
    if code is not None:
        prefix = "genflow: error: " if isinstance(err, GenflowError) else "genflow: "
        print(f"{prefix}{err}", file=sys.stderr, flush=True)
    return code


def launch(cfg, run_dir: Path, task: Task) -> Any:
    """Run ``task`` for the composed train config ``cfg`` in ``run_dir``: one process, or DDP."""
    if cfg.device.type != "ddp":
        if launched_by_torchrun() and (launched := env_context()).enabled:
            raise GenflowError(
                f"torchrun started {launched.world_size} processes but device="
                f"{cfg.device.type}; add device=ddp to train with all of them"
            )
        return task(cfg, run_dir, DistContext(), resolve_device(cfg.device))
    nproc = int(cfg.device.get("nproc_per_node") or 1)
    config = OmegaConf.to_container(cfg, resolve=True)
    if launched_by_torchrun():
        ctx, device = join(cfg.device)
        if nproc > 1 and nproc != ctx.world_size:
            log.warning(
                "device.nproc_per_node=%d ignored: torchrun started %d processes",
                nproc,
                ctx.world_size,
            )
        ctx.broadcast_object((config, str(run_dir)))  # the other ranks wait in follow()
        return task(cfg, run_dir, ctx, device)
    if nproc == 1:  # (validation has checked it is a positive integer)
        return task(cfg, run_dir, DistContext(), resolve_device(cfg.device))
    log.info(
        "starting %d DDP workers (%s); run directory %s", nproc, accelerator(cfg.device), run_dir
    )
    files = [h.baseFilename for h in logging.getLogger().handlers if hasattr(h, "baseFilename")]
    for handler in logging.getLogger().handlers:
        handler.flush()
    args = (task, config, str(run_dir), files[0] if files else None)
    return spawn_workers(worker, args, nproc)


def worker(task: Task, config: dict, run_dir: str, log_file: str | None) -> Any:
    """One self-launched DDP worker: join the group, run the task, leave; errors become
    exit codes (rank 0 says why)."""
    ctx = env_context()
    worker_logging(ctx.rank, log_file)
    cfg = OmegaConf.create(config)
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does: share the cores, not fight
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    try:
        ctx, device = join(cfg.device)
        result = task(cfg, Path(run_dir), ctx, device)
    except (GenflowError, Preempted) as err:  # a decision every rank took together
        code = report(err) if ctx.is_main else exit_code(err)
        _part(ctx)
        sys.exit(code)
    _part(ctx)
    return result


def torchrun_rank(run_main: Callable[[], int], task: Task) -> int:
    """A process torchrun started: join its group before any config exists (the ranks need
    it to receive rank 0's config); rank 0 runs ``run_main`` (compose the config, make the
    one run directory, launch), the other ranks ``follow``. Returns the exit code."""
    init_for_torchrun()
    ctx = env_context()
    if not ctx.is_main:
        return follow(task)
    try:
        return run_main()
    finally:
        ctx.broadcast_object(None)
        _part(ctx)


def follow(task: Task) -> int:
    """Ranks other than 0 under torchrun: run each job rank 0 broadcasts (several in a
    sweep) until it sends None. Rank 0 reports errors; the same decision stopped every rank."""
    ctx = env_context()
    worker_logging(ctx.rank, None)
    code = 0
    while (job := ctx.broadcast_object()) is not None:
        config, run_dir = job
        cfg = OmegaConf.create(config)
        ctx, device = join(cfg.device)
        try:
            task(cfg, Path(run_dir), ctx, device)
        except (GenflowError, Preempted) as err:
            # rank 0 stopped too and says why; it broadcasts None next (a preempted sweep
            # stops there), so every rank leaves the loop on the same broadcast
            code = exit_code(err)
    _part(ctx)
    return code


def _part(ctx: DistContext) -> None:
    """Leave the group together: a rank that tears its group down while another still
    talks to it can abort the other (gloo: "terminate called without an active exception")."""
    if dist.is_initialized():
        ctx.barrier()
    leave()


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def worker_logging(rank: int, log_file: str | None) -> None:
    """Logging of a process genflow started (no Hydra in it): rank 0 logs as Hydra would, to
    the console and appended to the run's train.log; the other ranks print errors only (rank
    0 reports the decisions they all share)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if rank == 0:
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
        if log_file:
            handlers.append(logging.FileHandler(check_appendable(log_file), mode="a"))
        level, fmt = logging.INFO, LOG_FORMAT
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
        level, fmt = logging.ERROR, f"[rank {rank}]" + LOG_FORMAT
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
    root.setLevel(level)


def init_for_torchrun() -> None:
    """gloo for CPU tensors, and nccl for CUDA tensors when there are GPUs. So under
    torchrun ``device.backend`` and ``device.timeout_min`` do not apply; the environment
    variable GENFLOW_DDP_TIMEOUT_MIN (default 30) sets the timeout."""
    if dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    minutes = float(os.environ.get("GENFLOW_DDP_TIMEOUT_MIN", 30))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=minutes))


def spawn_workers(entrypoint, args: tuple, nproc_per_node: int) -> object:
    """Run ``entrypoint(*args)`` in ``nproc_per_node`` local processes with torch's elastic
    launcher (what ``torchrun --standalone`` does); return rank 0's result. (Several machines:
    torchrun on each.)"""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc_per_node,
        run_id=f"genflow-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        results = elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise WorkerFailed(
            failure.exitcode, f"DDP worker rank {rank} exited with code {failure.exitcode}"
        ) from None
    except SignalException as err:  # the launcher passed the signal on; the workers saved
        raise WorkerFailed(
            128 + int(err.sigval), f"DDP workers stopped on {signal.Signals(err.sigval).name}"
        ) from None
    return results.get(0) if results else None
