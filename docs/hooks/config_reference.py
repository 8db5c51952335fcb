"""The configuration reference, generated from conf/ when the docs are built (an mkdocs hook),
so it cannot drift from the configs: every key of every option with its default and the
comment beside it in the YAML file.

Tested by tests/test_docs.py (every key OmegaConf reads from conf/ is in the reference)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"
PAGE = "reference/configuration.md"
# the groups a user picks on the command line, in the order of the page
GROUPS = (
    "model",
    "model/posterior",
    "model/prior",
    "dataset",
    "optimizer",
    "optimizer/scheduler",
    "trainer",
    "device",
    "logger",
    "data_scale",
)
COMMANDS = ("train", "eval", "sample")
SKIPPED = ("defaults", "hydra")  # Hydra's composition and its own settings
_KEY = re.compile(r"([A-Za-z_][\w-]*):(?:\s+(.*))?$")


@dataclass
class Row:
    key: str
    default: str
    comment: str


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a # inside quotes is part of the value."""
    quote = None
    for i, char in enumerate(rest):
        if char in "'\"":
            quote = None if quote == char else (quote or char)
        elif char == "#" and quote is None and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def package(text: str, group: str) -> str:
    """The key prefix of a config file: its group (model/posterior -> model.posterior.) unless
    the file says ``# @package _global_``."""
    if "# @package _global_" in text:
        return ""
    return group.replace("/", ".") + "." if group else ""


def rows(text: str, prefix: str = "") -> list[Row]:
    """The leaf keys of a YAML config's text, with their default and comment, in file order.
    Block lists are folded into one default; ``defaults:`` and ``hydra:`` are left out."""
    found: list[Row] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    pending: tuple[int, list[str], str] | None = None  # a key whose value is on the next lines
    items: list[str] = []

    def close_pending() -> None:
        nonlocal pending, items
        if pending is not None and items:
            _, path, comment = pending
            if path[0] not in SKIPPED:
                found.append(Row(prefix + ".".join(path), "[" + ", ".join(items) + "]", comment))
        pending, items = None, []

    for line in text.splitlines():
        content = line.strip()
        if not content or content.startswith("#") or content.startswith("|"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if content.startswith("- "):
            if pending is not None and indent >= pending[0]:
                items.append(_split_comment(content[2:])[0])
            continue
        match = _KEY.match(content)
        if match is None:
            continue  # a block scalar's text (help templates)
        close_pending()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, rest = match.group(1), match.group(2) or ""
        value, comment = _split_comment(rest)
        path = [k for _, k in stack] + [key]
        if value in ("", "|-", "|", ">"):
            stack.append((indent, key))
            pending = (indent, path, comment)
            continue
        if path[0] not in SKIPPED:
            found.append(Row(prefix + ".".join(path), value, comment))
    close_pending()
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(found: list[Row]) -> list[str]:
    if not found:
        return ["(no keys of its own)", ""]
    lines = ["| key | default | what it does |", "|---|---|---|"]
    for row in found:
        lines.append(f"| `{_cell(row.key)}` | `{_cell(row.default)}` | {_cell(row.comment)} |")
    return [*lines, ""]


def _first_comment(text: str) -> str:
    """The comment block a config file opens with, as one paragraph."""
    words = []
    for line in text.splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
    return " ".join(w for w in words if w)


def reference_markdown(conf: Path = CONF) -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `conf/` each time these pages are built: every key of every config,",
        "its default, and the comment beside it in the YAML file. Set any of them on the",
        "command line (`genflow train model=nsf model.num_bins=16`); `genflow train --cfg job`",
        "prints what a command line composes.",
        "",
    ]
    for command in COMMANDS:
        text = (conf / f"{command}.yaml").read_text()
        lines += [f"## genflow {command}", "", _first_comment(text), ""]
        lines += _table(rows(text))
    for group in GROUPS:
        lines += [f"## {group}", ""]
        for path in sorted((conf / group).glob("*.yaml")):
            text = path.read_text()
            lines += [f"### {group}={path.stem}", ""]
            summary = _first_comment(text)
            if summary:
                lines += [summary, ""]
            lines += _table(rows(text, package(text, group)))
    lines += [
        "## Presets",
        "",
        "Whole setups (`@package _global_`): `experiment=<name>`, `hparams_search=<name>`.",
        "",
    ]
    for group in ("experiment", "hparams_search"):
        for path in sorted((conf / group).glob("*.yaml")):
            lines.append(f"- `{group}={path.stem}`: {_first_comment(path.read_text())}")
        lines.append("")
    return "\n".join(lines)


def on_files(files, config):  # the mkdocs hook: the page exists only in the built site
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=reference_markdown()))
    return files
