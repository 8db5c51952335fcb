"""genflow train|eval|sample [overrides] -> Hydra.

The command picks the primary config (conf/<command>.yaml); everything after it is Hydra's
(overrides, -m, --help, --cfg). Before Hydra runs, group choices are checked so a typo gets
one line naming the valid options, and ``resume=`` is turned into the run directory to
continue in.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from genflow.config import config_dir
from genflow.errors import GenflowError

COMMANDS: dict[str, str] = {
    "train": "fit a model; writes a run directory under outputs/",
    "eval": "test metrics of a run's best checkpoint: genflow eval run=<run_dir>",
    "sample": "draw samples from a run: genflow sample run=<run_dir> sample.n=64",
}

USAGE = """usage: genflow <command> [overrides ...] [-m] [--help]

commands:
{commands}

Overrides are Hydra's: key=value, group=option, -m for a multirun sweep.
`genflow <command> --help` lists the config groups and the composed config."""


def _fail(message: str) -> int:
    print(f"genflow: error: {message}", file=sys.stderr)
    return 2


def _groups(root: Path) -> dict[str, list[str]]:
    """Config group path (e.g. 'model', 'optimizer/scheduler') -> its options."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(root).as_posix()] = options
    return groups


# Hydra's flags that take a value (``--cfg job``), and ``--info``'s optional one.
_VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra's command-line flags (with their values) from the overrides."""
    overrides: list[str] = []
    flags: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        takes_value = arg in _VALUE_FLAGS or (
            arg == "--info" and i + 1 < len(args) and args[i + 1] in _INFO_VALUES
        )
        if takes_value:
            flags += args[i : i + 2]
            i += 2
            continue
        (flags if arg.startswith("-") else overrides).append(arg)
        i += 1
    return overrides, flags


def check_group_choices(overrides: list[str], root: Path) -> None:
    """Raise GenflowError for ``group=option`` naming an option that does not exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = _groups(root)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # Hydra's parser message is already one sentence
        raise GenflowError(str(err).splitlines()[0]) from err
    for override in parsed:
        group = override.key_or_group
        if group not in groups or override.is_delete():
            continue
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        for value in values:
            if value not in groups[group] and value != "null":
                raise GenflowError(
                    f"unknown {group} '{value}'; valid choices: {', '.join(groups[group])}"
                )


def _value_of(overrides: list[str], key: str) -> str | None:
    for o in overrides:
        if o.startswith(f"{key}="):
            return o.split("=", 1)[1]
    return None


def prepare_resume(overrides: list[str], root: Path) -> list[str]:
    """Resume in the original run directory, with the original overrides first."""
    from genflow.engine.resume import find_matching_run, stored_overrides

    resume = _value_of(overrides, "resume")
    if not resume or resume == "null" or any(o.startswith("hydra.run.dir=") for o in overrides):
        return overrides
    if resume == "auto":
        run_dir = find_matching_run(overrides, root)
        if run_dir is None:
            return overrides
    else:
        path = Path(resume).expanduser()
        if not path.exists():
            raise GenflowError(f"resume={resume}: no such run directory or checkpoint file")
        run_dir = path.parent.parent if path.is_file() else path
    earlier = [o for o in stored_overrides(run_dir) if not o.startswith(("resume=", "hydra."))]
    return [*earlier, *overrides, f"hydra.run.dir={run_dir}"]


def _hydra_entry(command: str) -> Callable[[], None]:
    import hydra

    def job(cfg) -> object:
        from importlib import import_module

        task = import_module(f"genflow.tasks.{command}")
        try:
            return task.run(cfg)
        except GenflowError as err:
            logging.getLogger("genflow").debug("error: %s", err)
            print(f"genflow: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    return hydra.main(config_path=str(config_dir()), config_name=command, version_base="1.3")(job)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands="\n".join(f"  {k:<8}{v}" for k, v in COMMANDS.items())))
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        return _fail(f"unknown command '{command}'; valid commands: {', '.join(COMMANDS)}")
    root = config_dir()
    plain, flags = split_flags(overrides)
    wants_help = any(f in ("--help", "-h", "--hydra-help") for f in flags)
    try:
        if not wants_help:
            check_group_choices(plain, root)
            if command in ("eval", "sample"):
                run = _value_of(overrides, "run")
                if run is None:
                    raise GenflowError(
                        f"genflow {command} needs run=<run_dir> (a directory under outputs/)"
                    )
                if not Path(run).expanduser().exists():  # Hydra would create it as its output dir
                    raise GenflowError(f"run={run}: no such run directory or checkpoint file")
            if command == "train" and not any(f in ("--cfg", "-c", "--info") for f in flags):
                overrides = [*flags, *prepare_resume(plain, root)]
    except GenflowError as err:
        return _fail(str(err))
    saved = sys.argv
    sys.argv = [f"genflow-{command}", *overrides]
    try:
        _hydra_entry(command)()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
