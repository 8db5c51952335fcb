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
