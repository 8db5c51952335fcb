"""The documentation's configuration reference is generated from conf/ and lists every key of
every config with its default (docs/hooks/config_reference.py); `mkdocs build --strict` runs in
CI after the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

import config_reference  # noqa: E402


def _leaves(node, prefix: str = "") -> dict[str, object]:
    """Every leaf key of a config as OmegaConf reads it, without resolving interpolations."""
    out = {}
    for key in node.keys() if OmegaConf.is_dict(node) else ():
        if not prefix and key in config_reference.SKIPPED:
            continue
        value = node._get_node(key)
        path = f"{prefix}{key}"
        if OmegaConf.is_dict(value) and len(value) > 0:
            out.update(_leaves(value, path + "."))
        else:
            out[path] = value._value() if hasattr(value, "_value") else value
    return out


CONFIGS = [
    (path, group)
    for group in config_reference.GROUPS
    for path in sorted((config_reference.CONF / group).glob("*.yaml"))
] + [(config_reference.CONF / f"{c}.yaml", "") for c in config_reference.COMMANDS]


@pytest.mark.parametrize("path, group", CONFIGS, ids=lambda v: str(v)[-40:] if v else "")
def test_the_reference_lists_every_key_of_every_config_with_its_default(path, group):
    text = path.read_text()
    prefix = config_reference.package(text, group)
    listed = {row.key: row.default for row in config_reference.rows(text, prefix)}
    expected = {prefix + k: v for k, v in _leaves(OmegaConf.load(path)).items()}
    assert set(listed) == set(expected), path
    for key, value in expected.items():
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            shown = listed[key].strip("'\"")
            assert shown == str(value) or float(shown) == float(value), (key, shown, value)


def test_the_reference_page_names_every_option_and_preset():
    page = config_reference.reference_markdown()
    for group in config_reference.GROUPS:
        for path in (config_reference.CONF / group).glob("*.yaml"):
            assert f"### {group}={path.stem}" in page
    for path in (config_reference.CONF / "experiment").glob("*.yaml"):
        assert f"`experiment={path.stem}`" in page
    assert "| `model.num_bins` | `8` |" in page and "| `out` | `null` |" in page


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, command, overrides) for every `genflow train|eval|sample ...` line in a code
    block of the README or the docs: comments dropped, continuations joined, placeholders
    such as <run_dir> filled, and a multirun's comma lists expanded to each value."""
    import itertools
    import re

    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines, inside = path.read_text().splitlines(), False
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if line.startswith("```"):
                inside = not inside
                continue
            if not inside or not re.match(r"genflow (train|eval|sample)\b", line):
                continue
            while line.rstrip().endswith("\\") and i < len(lines):
                line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
            words = line.split("#", 1)[0].split()
            command, args = words[1], words[2:]
            if "--help" in args or "..." in args:
                continue
            multirun = "-m" in args
            args = [re.sub(r"<[^>]+>", "placeholder", a) for a in args if a != "-m"]
            choices = [
                [f"{a.split('=', 1)[0]}={v}" for v in a.split("=", 1)[1].split(",")]
                if multirun and "=" in a and "," in a.split("=", 1)[1]
                else [a]
                for a in args
            ]
            for combo in itertools.product(*choices):
                found.append((f"{path.name}: {line.strip()}", command, list(combo)))
    return found


DOCUMENTED = _documented_commands()


def test_the_documentation_shows_commands():
    assert len(DOCUMENTED) > 20


@pytest.mark.parametrize(
    "where, command, overrides", DOCUMENTED, ids=[f"{c} {' '.join(o)}" for _, c, o in DOCUMENTED]
)
def test_every_documented_command_composes_and_validates(where, command, overrides):
    """Each key=value the README and the docs show names a real key or group option with a
    valid value: the command's config composes and passes genflow's own validation."""
    from conftest import compose_config

    from genflow.validation import (
        validate_eval_config,
        validate_sample_config,
        validate_train_config,
    )

    overrides = [o for o in overrides if not o.startswith(("resume=", "hydra/launcher="))]
    cfg = compose_config(overrides, command)
    if command == "train":
        from genflow.data.tabular import complete_table_config

        complete_table_config(cfg.dataset)
        validate_train_config(cfg)
    elif command == "eval":
        validate_eval_config(cfg)
    else:
        validate_sample_config(cfg)
