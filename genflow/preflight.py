"""Checks on the command line before Hydra runs anything (and creates a run directory).

Group choices, unknown keys and bad values each get one sentence naming the key and what
is valid; ``resume=`` becomes the run directory to continue in. Nothing is written here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from genflow.errors import GenflowError

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


# conf/overlay holds the per-(model, data_scale) adjustments that train.yaml picks by
# interpolation; they are not a choice a user makes
INTERNAL_GROUPS = ("overlay",)


def config_groups(root: Path) -> dict[str, list[str]]:
    """Config group path (e.g. 'model', 'optimizer/scheduler') -> its options."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options and folder.relative_to(root).as_posix() not in INTERNAL_GROUPS:
            groups[folder.relative_to(root).as_posix()] = options
    return groups


def check_group_choices(overrides: list[str], root: Path) -> None:
    """Raise GenflowError for ``group=option`` naming an option that does not exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = config_groups(root)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # Hydra's parser message is already one sentence
        raise GenflowError(_quoting_hint(str(err), overrides) or str(err).splitlines()[0]) from err
    for override in parsed:
        group = override.key_or_group
        if group == "hydra/launcher":
            _check_launcher_plugin(override.get_value_element_as_str())
        if group not in groups or override.is_delete() or group.startswith("hydra/"):
            continue  # hydra/ groups also hold plugins' options: Hydra checks those
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


def _check_launcher_plugin(launcher: str) -> None:
    from importlib.util import find_spec

    if "slurm" in launcher or "submitit" in launcher:
        if find_spec("hydra_plugins.hydra_submitit_launcher") is None:
            raise GenflowError(
                f"hydra/launcher={launcher} needs hydra-submitit-launcher, which is not "
                'installed: pip install -e ".[slurm]"'
            )


# keys whose values are paths or file names: genflow quotes them for Hydra's override grammar
# where they hold characters it takes only inside quotes (non-ASCII letters, spaces, ...),
# so a path genflow printed can always be passed back to it
PATH_KEYS = (
    "run",
    "resume",
    "checkpoint",
    "output_root",
    "dataset_root",
    "out",
    "dataset.root",
    "dataset.path",
    "hydra.run.dir",
    "hydra.sweep.dir",
)
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_\-+./:@~]*")


def quote_paths(overrides: list[str]) -> list[str]:
    """``run=/data/été/x`` -> ``run='/data/été/x'``: path values with characters Hydra's
    grammar takes only quoted are quoted (already quoted values, interpolations and the
    values it parses plainly are left as they are)."""
    quoted = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if (
            sep
            and key.lstrip("+") in PATH_KEYS
            and value
            and value[0] not in "'\""
            and "${" not in value
            and not _PLAIN_VALUE.fullmatch(value)
        ):
            if "'" not in value:
                o = f"{key}='{value}'"
            elif '"' not in value:
                o = f'{key}="{value}"'
        quoted.append(o)
    return quoted


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def value_of(overrides: list[str], key: str) -> str | None:
    for o in overrides:
        if o.startswith(f"{key}="):
            return _unquoted(o.split("=", 1)[1])
    return None


def compose_train(overrides: list[str], root: Path, command: str = "train") -> DictConfig:
    """The config of ``command`` (train, eval or sample) these overrides give, or one
    sentence saying which override is wrong."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    plain = quote_paths([o for o in overrides if not o.startswith(("hydra.", "-"))])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(root), version_base="1.3"):
            return compose(command, overrides=plain)
    except HydraException as err:
        raise GenflowError(_explain(err, plain, root, command)) from err
    finally:
        GlobalHydra.instance().clear()


def _quoting_hint(message: str, overrides: list[str]) -> str | None:
    """For Hydra's lexer errors (a non-ASCII letter, a space ... in an unquoted value): which
    override, and how to quote it."""
    if "LexerNoViableAltException" not in message and "token recognition error" not in message:
        return None
    odd = [o for o in overrides if not o.isascii()] or [o for o in overrides if o in message]
    if not odd:
        return None
    key, _, value = odd[0].partition("=")
    return (
        f"the override {odd[0]} holds characters that Hydra's override grammar takes only "
        f"inside quotes; write {key}='{value}' (in the shell: \"{key}='{value}'\")"
    )


def _explain(err: Exception, overrides: list[str], root: Path, command: str = "train") -> str:
    message = str(err)
    hint = _quoting_hint(message, overrides)
    if hint:
        return hint
    unknown = re.search(r"Could not override '([^']+)'", message)
    if unknown and "To append to your config" in message:
        key = unknown.group(1)
        parent, _, _ = key.rpartition(".")
        rest = [o for o in overrides if not o.lstrip("+~").startswith(key)]
        try:
            node = compose_train(rest, root, command)
            node = OmegaConf.select(node, parent) if parent else node
            keys = (
                ", ".join(sorted(str(k) for k in node.keys()))
                if isinstance(node, DictConfig)
                else ""
            )
        except GenflowError:
            keys = ""
        where = f"keys under {parent}" if parent else "top-level keys"
        return (
            f"unknown config key '{key}'"
            + (f"; {where}: {keys}" if keys else "")
            + f" (to add a new key write +{key}=...)"
        )
    nested = re.search(r"Could not override '([^']+)'\. No match in the defaults list", message)
    if nested and nested.group(1) in ("model/posterior", "model/prior"):
        model = value_of(overrides, "model") or "the default model"
        part = nested.group(1).split("/")[1]
        return f"model/{part} is a part of model=vae; {model} has no {part} (add model=vae)"
    return message.strip().splitlines()[0]


def prepare_resume(overrides: list[str], root: Path, cfg: DictConfig | None) -> list[str]:
    """Resume in the original run directory, with the original overrides first."""
    from genflow.engine.run_dir import RunDir

    resume = value_of(overrides, "resume")
    if not resume or resume == "null" or any(o.startswith("hydra.run.dir=") for o in overrides):
        return overrides
    if resume == "auto":
        if cfg is None:
            return overrides  # a multirun sweep: each job resolves resume=auto itself
        run, closest = RunDir.nearest(cfg)
        if run is None:
            if closest is not None:  # say why nothing matched, then start fresh
                near, keys = closest
                shown = "; ".join(keys[:5]) + (
                    f"; and {len(keys) - 5} more" if len(keys) > 5 else ""
                )
                print(
                    f"genflow: resume=auto: no earlier run has this config; the nearest, "
                    f"{near.path}, differs in {shown}",
                    file=sys.stderr,
                    flush=True,
                )
            return overrides
    else:
        path = Path(resume).expanduser()
        if not path.exists():
            raise GenflowError(f"resume={resume}: no such run directory or checkpoint file")
        run = RunDir.of_checkpoint(path) if path.is_file() else RunDir(path)
    run.check_writable()  # before Hydra opens its train.log there
    earlier = run.stored_overrides()  # without hydra.* and resume=
    try:  # the run's own overrides, then this command line's: they must still compose
        compose_train([*earlier, *(o for o in overrides if not o.startswith("resume="))], root)
    except GenflowError as err:
        raise GenflowError(
            f"resume={resume}: the run's overrides ({' '.join(earlier) or 'none'}) and this "
            f"command line do not compose: {err}"
        ) from err
    return [*earlier, *overrides, f"hydra.run.dir={run.path}"]


def preflight(command: str, overrides: list[str], root: Path) -> list[str]:
    """Check a command line; return the overrides to hand to Hydra (paths quoted where
    Hydra's grammar needs it)."""
    return quote_paths(_preflight(command, overrides, root))


def _preflight(command: str, overrides: list[str], root: Path) -> list[str]:
    plain, flags = split_flags(overrides)
    if any(f in ("--help", "-h", "--hydra-help") for f in flags):
        return overrides
    check_group_choices(quote_paths(plain), root)
    if command in ("eval", "sample"):
        run = value_of(plain, "run")
        if run is None:
            raise GenflowError(
                f"genflow {command} needs run=<run_dir> (a directory under outputs/)"
            )
        path = Path(run).expanduser()
        if not path.exists():  # Hydra would create it as its output dir
            raise GenflowError(f"run={run}: no such run directory or checkpoint file")
        from genflow.validation import validate_eval_config, validate_sample_config

        cfg = compose_train(plain, root, command)  # unknown keys: one sentence, exit 2
        (validate_eval_config if command == "eval" else validate_sample_config)(cfg)
        if path.is_file() and value_of(plain, "hydra.run.dir") is None:
            from genflow.engine.run_dir import RunDir

            # a checkpoint file: its run directory is Hydra's output dir (logs go there)
            overrides = [*overrides, f"hydra.run.dir={RunDir.of_checkpoint(path).path}"]
        return overrides
    if any(f in ("--cfg", "-c", "--info") for f in flags):
        return overrides
    search = value_of(plain, "hparams_search") not in (None, "null")  # Optuna names its own
    multirun = any(f in ("-m", "--multirun") for f in flags) or search
    cfg = None
    if not multirun:  # a sweep's jobs are checked one by one, so one bad job cannot stop it
        from genflow.data.tabular import complete_table_config
        from genflow.validation import validate_train_config

        cfg = compose_train([o for o in plain if not o.startswith("resume=")], root)
        complete_table_config(cfg.dataset)
        validate_train_config(cfg)
    named = sweep_names(plain, root) if multirun and not search else []
    return [*flags, *prepare_resume(plain, root, cfg), *named]


def sweep_names(overrides: list[str], root: Path) -> list[str]:
    """A sweep's directories named after what it sweeps: ``multirun/<time>-optimizer.lr+seed``
    for the sweep (also its W&B group), ``3-maf-digits-optimizer.lr=0.0003,seed=1`` for a job;
    nothing where the user named them, or where nothing on the command line is swept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if value_of(overrides, "hydra.sweep.dir") or value_of(overrides, "hydra.sweep.subdir"):
        return []
    groups = config_groups(root)
    swept = []
    for override in OverridesParser.create().parse_overrides(quote_paths(overrides)):
        key = override.key_or_group
        if override.is_sweep_override() and not key.startswith("hydra"):
            value = f"${{hydra:runtime.choices.{key}}}" if key in groups else f"${{{key}}}"
            swept.append((key.replace("/", "."), value))
    if not swept:
        return []
    keys = "+".join(key for key, _ in swept)
    values = ",".join(f"{key}={value}" for key, value in swept)
    # quoted: the values hold '=' and ',' (Hydra still resolves interpolations in quotes)
    return [
        f"hydra.sweep.dir='${{output_root}}/multirun/${{now:%Y-%m-%d_%H-%M-%S}}-{keys}'",
        "hydra.sweep.subdir='${hydra.job.num}-${hydra:runtime.choices.model}-"
        f"${{hydra:runtime.choices.dataset}}-{values}'",
    ]
