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
def test_every_documented_command_composes_and_validates(where, command, overrides, tmp_path):
    """Each key=value the README and the docs show names a real key or group option with a
    valid value: the command's config composes and passes genflow's own validation. A table
    the command names (`dataset.path=table.csv`) is written first, small, in that format."""
    import numpy as np
    from conftest import compose_config

    from genflow.validation import (
        validate_eval_config,
        validate_sample_config,
        validate_train_config,
    )

    overrides = [o for o in overrides if not o.startswith(("resume=", "hydra/launcher="))]
    if "dataset=tabular" in overrides:
        [i] = [i for i, o in enumerate(overrides) if o.startswith("dataset.path=")]
        table = tmp_path / Path(overrides[i].split("=", 1)[1]).name
        rows = np.random.default_rng(0).normal(size=(60, 3))
        if table.suffix == ".npy":
            np.save(table, rows)
        else:
            np.savetxt(table, rows, delimiter=",", header="a,b,c", comments="")
        overrides[i] = f"dataset.path={table}"
    cfg = compose_config(overrides, command)
    if command == "train":
        from genflow.data.tabular import complete_table_config

        complete_table_config(cfg.dataset)
        validate_train_config(cfg)
    elif command == "eval":
        validate_eval_config(cfg)
    else:
        validate_sample_config(cfg)


def _readme_inline_settings() -> list[str]:
    """Every `key=value` the README names in running text (inside backticks, outside code
    blocks), with placeholders such as `W` or `<run_dir>` left out."""
    import re

    text = re.sub(r"```.*?```", "", (ROOT / "README.md").read_text(), flags=re.S)
    found = []
    for token in re.findall(r"`([^`\s]+)`", text):
        key, sep, value = token.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_./]*", key):
            continue
        if re.fullmatch(r"[A-Z]|<[^>]+>|", value) or token in ("group=option", "key=value"):
            continue
        found.append(token)
    return sorted(set(found))


README_SETTINGS = _readme_inline_settings()


def test_the_readme_names_settings_in_its_text():
    assert len(README_SETTINGS) > 10


@pytest.mark.parametrize("setting", README_SETTINGS)
def test_every_setting_the_readme_names_composes(setting):
    """A `key=value` in the README's text is a real key or group option of the command it
    belongs to (genflow eval's and sample's own keys, or genflow train's)."""
    from conftest import compose_config

    key = setting.split("=", 1)[0]
    if key.startswith("sample.") or key == "sample":
        command = "sample"
    elif key in ("checkpoint", "split", "run", "out", "dataset_root") or key.startswith("eval."):
        command = "eval"
    else:
        command = "train"
    # a key that only some options of a group have, with an option that has it
    companions = {"dataset.download": ["dataset=mnist"]}.get(key, [])
    compose_config([*companions, setting], command)


def _markdown_links(path: Path) -> list[tuple[str, str]]:
    import re

    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [
        (target, anchor)
        for target, _, anchor in (
            link.partition("#") for link in re.findall(r"\]\(([^)\s]+)\)", text)
        )
        if not target.startswith(("http://", "https://", "mailto:"))
    ]


def _heading_slugs(path: Path) -> set[str]:
    """The anchors mkdocs gives a page's headings (its default slugify)."""
    import re

    slugs = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title)).strip("-"))
    return slugs


def test_the_readme_links_to_files_and_headings_that_exist():
    """mkdocs --strict checks the links between the docs' pages; the README is not one of
    them, so its links to files and to headings of the docs are checked here."""
    links = _markdown_links(ROOT / "README.md")
    assert len(links) > 20
    for target, anchor in links:
        path = ROOT / target
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in _heading_slugs(path), f"README links to {target}#{anchor}"
