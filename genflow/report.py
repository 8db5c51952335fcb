"""genflow report PATH...: the runs under PATH (run directories, sweep directories, output
roots, globs) in one table, from the run directories alone (no W&B, no network).

One row per run: model, dataset, the overrides that differ between the runs, status, steps,
training time, the best validation value of the monitored metric and its step, and the test
metrics of eval.json; sorted by the monitored metric (runs without a value last), with the
machines the runs were evaluated on (eval.json's ``hardware``) under the table. Written
to the terminal, as report.md (a markdown table) and report.csv, with curves.png (the
monitored validation metric against step, one line per run), under --out.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genflow.engine.files import save_figure, unreadable, write_text, write_with
from genflow.engine.run_dir import RunDir
from genflow.errors import GenflowError, first_line

COLUMNS = (
    "run", "model", "dataset", "differs", "status", "steps", "minutes",
    "best_val", "best_step", "test_bpd", "test_nll", "test_bpd_max",
)  # fmt: skip


@dataclass
class RunRow:
    run: RunDir
    model: str = "?"
    dataset: str = "?"
    overrides: list[str] = field(default_factory=list)
    status: str = "?"
    steps: int | None = None
    minutes: float | None = None
    metric: str = "bpd"
    mode: str = "min"
    best_val: float | None = None
    best_step: int | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    test: dict[str, Any] = field(default_factory=dict)


def find_runs(paths: list[str]) -> list[RunDir]:
    """Every run directory under ``paths`` (a run, a sweep, an output root, or a glob)."""
    found: dict[Path, RunDir] = {}
    for pattern in paths:
        matches = glob.glob(os.path.expanduser(pattern)) or [pattern]
        for match in map(Path, matches):
            if not match.exists():
                raise GenflowError(f"{pattern}: no such run or sweep directory")
            if (match / ".hydra" / "config.yaml").is_file():  # a run
                configs = [match / ".hydra" / "config.yaml"]
            else:  # a sweep or an output root (a file holds no runs)
                configs = sorted(match.glob("**/.hydra/config.yaml")) if match.is_dir() else []
            for config in configs:
                run = found.setdefault(config.parent.parent.resolve(), RunDir(config.parent.parent))
                run.check_files()  # a named pipe or a device where report reads: one sentence
    if not found:
        raise GenflowError(f"no run directories (with .hydra/config.yaml) under {' '.join(paths)}")
    return list(found.values())


def _yaml(path: Path) -> Any:
    """A YAML file of a run as plain containers, or one sentence naming it."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:
        raise unreadable(path, err) or GenflowError(
            f"{path} is damaged: not readable as YAML ({first_line(err)})"
        ) from err


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise unreadable(path, err) or GenflowError(
            f"{path} is damaged: not readable as JSON ({first_line(err)})"
        ) from err
    if not isinstance(value, dict):
        raise GenflowError(f"{path} is damaged: not a JSON object")
    return value


def _mapping_at(stored: Any, key: str) -> DictConfig | None:
    """The mapping at dotted ``key`` of a file's contents, or None where something else is
    (a list, a plain value, nothing)."""
    try:
        found = OmegaConf.select(OmegaConf.create(stored), key)
    except Exception:  # a list, or a plain value where a mapping goes
        return None
    return found if isinstance(found, DictConfig) else None


def read_run(run: RunDir) -> RunRow:
    """One row of the table; a damaged file of the run is one sentence naming it."""
    row = RunRow(run)
    hydra_file = run.config_file.parent / "hydra.yaml"
    if hydra_file.is_file():
        choices = _mapping_at(_yaml(hydra_file), "hydra.runtime.choices")
        if choices is None:
            raise GenflowError(f"{hydra_file} is damaged: it holds no hydra.runtime.choices")
        row.model, row.dataset = str(choices.get("model")), str(choices.get("dataset"))
    row.overrides = run.stored_overrides()
    config = _yaml(run.config_file)
    if not isinstance(config, dict):
        raise GenflowError(f"{run.config_file} is damaged: not a YAML mapping")
    monitor = _mapping_at(config, "trainer.monitor") or {}
    row.metric, row.mode = str(monitor.get("metric", "bpd")), str(monitor.get("mode", "min"))
    records = []
    if run.metrics.is_file():
        try:
            lines = run.metrics.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise GenflowError(f"{run.metrics} cannot be read ({first_line(err)})") from err
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    row.curve = [
        (r["step"], float(r[row.metric]))
        for r in records
        if r.get("split") == "val" and isinstance(r.get(row.metric), (int, float))
    ]
    if row.curve:
        pick = min if row.mode == "min" else max
        row.best_step, row.best_val = pick(row.curve, key=lambda point: point[1])
    row.steps = max((r["step"] for r in records if r.get("split") == "train"), default=None)
    if run.eval_json().is_file():
        row.test = _json_object(run.eval_json())
    row.minutes = _minutes(run)
    row.status = _status(run, row)
    return row


def _minutes(run: RunDir) -> float | None:
    checkpoints = run.last_checkpoints()
    if not checkpoints:
        return None
    import torch

    try:
        state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    except Exception:
        return None
    trainer = state.get("trainer") if isinstance(state, dict) else None
    seconds = trainer.get("train_seconds") if isinstance(trainer, dict) else None
    return seconds / 60.0 if isinstance(seconds, (int, float)) else None


def _status(run: RunDir, row: RunRow) -> str:
    if run.in_use():
        return "running"
    if row.test:
        return "finished"
    if row.steps is not None or run.last_checkpoints():
        return "stopped"
    return "failed"


PAPER_COLUMNS = ("preset", "run", "status", "steps", "minutes", "published", "ours", "gap")
PAPER_COLUMNS += ("citation",)
# the figure of eval.json each kind of published number compares with
OURS = {
    "bpd": lambda test: test.get("bpd"),
    "nll": lambda test: test.get("nll"),
    "neg_elbo": lambda test: -test["elbo"] if "elbo" in test else None,
}


def paper_presets() -> dict[str, dict[str, Any]]:
    """conf/experiment presets that carry a published figure (a ``paper:`` block)."""
    from genflow.config import config_dir

    presets = {}
    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        paper = OmegaConf.load(path).get("paper")
        if paper is not None:
            presets[path.stem] = OmegaConf.to_container(paper)
    return presets


def against_papers(rows: list[RunRow], cells: list[dict[str, str]]) -> list[dict[str, str]]:
    """One row per paper preset: each run of it beside the published figure (ours, the
    gap), and a blank row for a preset not run yet."""
    out = []
    for preset, paper in paper_presets().items():
        runs = [(r, c) for r, c in zip(rows, cells, strict=True) if _preset(r) == preset]
        metric, value = paper.get("metric"), paper.get("value")
        note = f" ({paper['note']})" if paper.get("note") else ""
        for row, cell in runs or [(None, dict.fromkeys(COLUMNS, ""))]:
            ours = OURS[metric](row.test) if row is not None and metric in OURS else None
            gap = ours - value if ours is not None and value is not None else None
            out.append(
                {
                    **cell,
                    "status": cell["status"] or "not run",
                    "preset": preset,
                    "published": "" if value is None else f"{value:g} {metric}",
                    "ours": _format(ours),
                    "gap": "" if gap is None else f"{gap:+.4f}",
                    "citation": paper.get("citation", "") + note,
                }
            )
    return out


def _preset(row: RunRow) -> str | None:
    for override in row.run.stored_overrides():
        if override.startswith("experiment="):
            return override.split("=", 1)[1]
    return None


def _meaning(value: str) -> Any:
    """An override's value as it is read: false == False, 1e-3 == 0.001."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return float(value)
    except ValueError:
        return value


def differing(rows: list[RunRow]) -> None:
    """Keep, per run, only the overrides whose value is not the same in every run."""
    parsed = [dict(o.split("=", 1) for o in r.overrides if "=" in o) for r in rows]
    keys = {k for p in parsed for k in p}
    same = {
        k
        for k in keys
        if all(k in p for p in parsed) and len({_meaning(p[k]) for p in parsed}) == 1
    }
    for row, p in zip(rows, parsed, strict=True):
        row.overrides = [f"{k}={v}" for k, v in p.items() if k not in same]


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def table(rows: list[RunRow], base: Path) -> list[dict[str, str]]:
    out = []
    for row in rows:
        try:
            name = str(row.run.path.resolve().relative_to(base.resolve()))
        except ValueError:
            name = str(row.run.path)
        values = {
            "run": name,
            "model": row.model,
            "dataset": row.dataset,
            "differs": " ".join(row.overrides),
            "status": row.status,
            "steps": row.steps,
            "minutes": None if row.minutes is None else f"{row.minutes:.2f}",
            "best_val": row.best_val,
            "best_step": row.best_step,
            "test_bpd": row.test.get("bpd"),
            "test_nll": row.test.get("nll"),
            "test_bpd_max": row.test.get("bpd_max"),
            # continuous flows: the function evaluations behind the test figures
            "test_nfe": None if row.test.get("nfe") is None else f"{row.test['nfe']:.0f}",
        }
        out.append({k: _format(v) for k, v in values.items()})
    return out


def markdown(rows: list[dict[str, str]], metric: str, columns=COLUMNS) -> str:
    header = [c if c != "best_val" else f"best val {metric}" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def terminal(rows: list[dict[str, str]], columns=COLUMNS) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def curves(rows: list[RunRow], names: list[str], path: Path, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for row, name in zip(rows, names, strict=True):
        if row.curve:
            steps, values = zip(*row.curve, strict=True)
            ax.plot(steps, values, marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    if any(row.curve for row in rows):
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="genflow report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories, output roots, globs")
    parser.add_argument(
        "--out", default="report", help="folder for report.md, report.csv, curves.png"
    )
    parser.add_argument(
        "--against",
        choices=["papers"],
        help="papers: a row per paper preset (experiment=...): ours beside the published figure",
    )
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    rows = [read_run(run) for run in runs]
    differing(rows)
    metrics = {(r.metric, r.mode) for r in rows}
    metric, mode = sorted(metrics)[0] if len(metrics) == 1 else ("bpd", "min")
    sign = 1 if mode == "min" else -1
    rows.sort(key=lambda r: (r.best_val is None, sign * (r.best_val or 0.0), str(r.run.path)))
    base = Path(os.path.commonpath([str(r.run.path.resolve()) for r in rows]))
    base = base if len(rows) > 1 else base.parent
    cells = table(rows, base)
    labels = [f"{c['run']} {c['differs']}".strip() for c in cells]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GenflowError(
            f"--out {out} is a file; --out names the folder for report.md, report.csv and curves.png"
        )
    columns: tuple[str, ...] = COLUMNS
    if any(c["test_nfe"] for c in cells):  # a continuous flow among the runs: its NFE beside
        columns += ("test_nfe",)
    if args.against == "papers":
        columns, cells = PAPER_COLUMNS, against_papers(rows, cells)
    machines = sorted({str(r.test["hardware"]) for r in rows if r.test.get("hardware")})
    hardware = [f"hardware: {m}" for m in machines]
    write_text(
        out / "report.md",
        markdown(cells, metric, columns) + "".join(f"\n{line}\n" for line in hardware),
    )

    def write_csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(cells)

    write_with(out / "report.csv", write_csv)
    png = curves(rows, labels, out / "curves.png", metric)
    print("\n".join([terminal(cells, columns), *hardware]))
    print(
        f"\n{len(rows)} runs under {base}; written {out / 'report.md'}, {out / 'report.csv'}, {png}"
    )
    return 0
