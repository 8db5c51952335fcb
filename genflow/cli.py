"""genflow train|eval|sample [overrides] -> Hydra.

The command picks the primary config (conf/<command>.yaml); everything after it is Hydra's
(overrides, -m, --help, --cfg). ``preflight`` checks the command line first, so a typo or a
bad value gets one sentence and exit code 2 before any run directory exists.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable

from genflow.config import config_dir
from genflow.errors import GenflowError, storage_error

log = logging.getLogger("genflow")

COMMANDS: dict[str, str] = {
    "train": "fit a model; writes a run directory under outputs/",
    "eval": "test metrics of a run's best checkpoint: genflow eval run=<run_dir>",
    "sample": "draw samples from a run: genflow sample run=<run_dir> sample.n=64",
    "report": "one table of runs: genflow report outputs/multirun/<date> [more runs] [--out DIR]",
}

USAGE = """usage: genflow <command> [overrides ...] [-m] [--help] | genflow --version

commands:
{commands}

Overrides are Hydra's: key=value, group=option, -m for a multirun sweep.
`genflow <command> --help` lists the config groups and the composed config."""

# Run directories of sweep jobs that failed; the sweep goes on and the command exits 1.
FAILED_RUNS: list[str] = []


def _fail(message: str) -> int:
    print(f"genflow: error: {message}", file=sys.stderr, flush=True)
    return 2


def _hydra_entry(command: str) -> Callable[[], None]:
    import hydra

    def job(cfg) -> object:
        from importlib import import_module

        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from genflow.engine.launch import WorkerFailed, exit_code, report
        from genflow.engine.preemption import Preempted

        task = import_module(f"genflow.tasks.{command}")
        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        try:
            try:
                result = task.run(cfg)
            except OSError as err:  # a full disk (metrics, pictures): one sentence
                raise (storage_error(err) or err) from err
        except Exception as err:
            # a stopped run (signal, failed DDP workers) ends the command, sweep or not;
            # bad input ends a single run with its sentence
            if isinstance(err, (Preempted, WorkerFailed)) or (
                not multirun and exit_code(err) is not None
            ):
                log.error("%s", err)  # in the run's log file too, not only on stderr
                sys.exit(report(err))
            if not multirun:
                raise
            # one failed run of a sweep: say so, keep its log, and let the sweep go on
            FAILED_RUNS.append(hydra_cfg.runtime.output_dir)
            log.error(
                "sweep run %s failed",
                hydra_cfg.runtime.output_dir,
                exc_info=not isinstance(err, GenflowError),
            )
            print(
                f"genflow: error: run {hydra_cfg.runtime.output_dir} failed: {err}",
                file=sys.stderr,
                flush=True,
            )
            return math.nan
        if command == "train":
            # the objective a sweeper (Optuna) optimises: the best value of trainer.monitor
            return float(result["best"])
        return result

    return hydra.main(config_path=str(config_dir()), config_name=command, version_base="1.3")(job)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `genflow train --help | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = USAGE.format(commands="\n".join(f"  {k:<8}{v}" for k, v in COMMANDS.items()))
    if not argv:  # a command is missing: say what there is, and fail
        print(usage, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage)
        return 0
    if argv[0] in ("-V", "--version"):
        import torch

        from genflow import __version__

        print(f"genflow {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})")
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        return _fail(f"unknown command '{command}'; valid commands: {', '.join(COMMANDS)}")
    if command == "report":  # reads run directories: no Hydra config of its own
        from genflow.report import main as report

        try:
            return report(overrides)
        except GenflowError as err:
            return _fail(str(err))
    if command == "train":
        from genflow.engine.distributed import launched_by_torchrun

        if launched_by_torchrun():
            return _torchrun_rank(overrides)
    return _run(command, overrides)


def _torchrun_rank(overrides: list[str]) -> int:
    """Under torchrun: rank 0 composes the config and makes the one run directory; the
    other ranks train the jobs it broadcasts (several in a sweep) until it sends None."""
    from genflow.engine.launch import torchrun_rank
    from genflow.tasks.train import train

    return torchrun_rank(lambda: _run("train", overrides), train)


def _run(command: str, overrides: list[str]) -> int:
    from genflow.preflight import preflight

    try:
        overrides = preflight(command, overrides, config_dir())
    except GenflowError as err:
        return _fail(str(err))
    saved = sys.argv
    sys.argv = [f"genflow-{command}", *overrides]
    FAILED_RUNS.clear()
    try:
        _hydra_entry(command)()
    finally:
        sys.argv = saved
    if FAILED_RUNS:
        print(
            f"genflow: {len(FAILED_RUNS)} run(s) of the sweep failed: {', '.join(FAILED_RUNS)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
