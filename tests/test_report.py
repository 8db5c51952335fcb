"""genflow report: one table of runs from their directories (a sweep, hand-picked runs,
runs still going and runs that failed), as text, markdown, CSV and a learning-curve PNG."""

from __future__ import annotations

import csv
import os
import shutil
import socket

import pytest
from conftest import REPO, RUN_TINY, run_dirs, run_genflow

from genflow.cli import main


def test_report_of_a_sweep_and_of_running_and_failed_runs(workdir, capsys):
    tiny = ["model.hidden_channels=8", "model.num_blocks=1", *RUN_TINY]
    run_genflow(["train", "-m", *tiny, "trainer.sample_every=0", "optimizer.lr=1e-3,1e-2"], workdir)
    finished = run_dirs(workdir)
    assert len(finished) == 2
    # a run still training (its lock names this live process) and one that failed at start
    running, failed = workdir / "outputs" / "running", workdir / "outputs" / "failed"
    for fake in (running, failed):
        shutil.copytree(finished[0] / ".hydra", fake / ".hydra")
    (running / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}")
    shutil.copy(finished[0] / "metrics.jsonl", running / "metrics.jsonl")

    out = workdir / "report"
    assert main(["report", str(workdir / "outputs"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 4 and text.count("\n") >= 5
    status = {r["run"].rsplit("/", 1)[-1]: r["status"] for r in rows}
    assert status["running"] == "running" and status["failed"] == "failed"
    done = [r for r in rows if r["status"] == "finished"]
    assert sorted(r["differs"] for r in done) == ["optimizer.lr=0.001", "optimizer.lr=0.01"]
    # sorted by the best validation bpd; every finished run has its test figures
    values = [float(r["best_val"]) for r in rows if r["best_val"]]
    assert values == sorted(values) and all(float(r["test_bpd"]) > 0 for r in done)
    assert rows[-1]["status"] == "failed" and rows[-1]["best_val"] == ""
    markdown = (out / "report.md").read_text().splitlines()
    assert markdown[0].startswith("| run | model | dataset | differs | status |")
    assert markdown[1].startswith("|---|") and len([r for r in markdown if r[:1] == "|"]) == 6
    # and the machine the figures came from, as eval.json recorded it
    assert markdown[-1].startswith("hardware: ") and "torch" in markdown[-1]
    assert "hardware: " in text
    assert (out / "curves.png").stat().st_size > 1000


def test_report_of_nothing_says_so(workdir, capsys):
    assert main(["report", str(workdir / "nowhere")]) == 2
    assert "no such run or sweep directory" in capsys.readouterr().err
    (workdir / "empty").mkdir()
    assert main(["report", str(workdir / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_report_against_papers_puts_our_figure_beside_the_published_one(workdir, capsys):
    tiny = ["model.hidden_features=16", "model.latent_features=4", "model.dropout=0"]
    short = ["trainer.max_steps=4", "trainer.eval_every=4", "trainer.sample_every=0"]
    run_genflow(
        ["train", "experiment=vae_digits", *tiny, *short, "eval.iw_samples=2", "logger=none"],
        workdir,
    )
    out = workdir / "papers"
    assert main(["report", str(workdir / "outputs"), "--against", "papers", "--out", str(out)]) == 0
    rows = {r["preset"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert set(rows) == {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")} - {
        "realnvp_checkerboard"  # no paper behind it
    }
    ours = rows["vae_digits"]
    assert ours["status"] == "finished" and ours["published"] == "100.54 neg_elbo"
    assert float(ours["gap"]) == pytest.approx(float(ours["ours"]) - 100.54, abs=1e-3)
    assert rows["glow_cifar10"]["status"] == "not run" and rows["glow_cifar10"]["ours"] == ""
    assert "Kingma & Dhariwal, 2018" in rows["glow_cifar10"]["citation"]
    assert "| preset | run | status |" in (out / "report.md").read_text()
    capsys.readouterr()


def test_overrides_that_mean_the_same_do_not_differ():
    from genflow.engine.run_dir import RunDir
    from genflow.report import RunRow, differing

    rows = [
        RunRow(RunDir("a"), overrides=["model=maf", "flag=False", "optimizer.lr=1e-3"]),
        RunRow(RunDir("b"), overrides=["model=nice", "flag=false", "optimizer.lr=0.001"]),
    ]
    differing(rows)
    assert [r.overrides for r in rows] == [["model=maf"], ["model=nice"]]


def _hand_made_run(path):
    """A run directory as genflow writes it, by hand (no training): configs, records, eval."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text("trainer:\n  monitor:\n    metric: bpd\n")
    (path / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      model: realnvp\n      dataset: digits\n"
    )
    (path / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.01\n")
    (path / "metrics.jsonl").write_text(
        '{"step": 10, "split": "train", "loss": 1.0}\n{"step": 10, "split": "val", "bpd": 2.5}\n'
        '[1, 2]\n{"step": "x"}\n{"step": 20, "spl'  # a list, a bad step, a line cut short
    )
    (path / "eval.json").write_text('{"bpd": 2.4}\n')


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("eval.json", "{not json", "eval.json is damaged: not readable as JSON"),
        ("eval.json", "[1, 2]", "eval.json is damaged: not a JSON object"),
        (".hydra/hydra.yaml", "hydra: [unclosed", "hydra.yaml is damaged: not readable as YAML"),
        (".hydra/hydra.yaml", "- 1\n", "hydra.yaml is damaged: it holds no hydra.runtime.choices"),
        (
            ".hydra/hydra.yaml",
            "hydra: 5\n",
            "hydra.yaml is damaged: it holds no hydra.runtime.choices",
        ),
        (".hydra/config.yaml", "- a\n", "config.yaml is damaged: not a YAML mapping"),
        (".hydra/overrides.yaml", "a: 1\n", "overrides.yaml is not a YAML list of overrides"),
    ],
)
def test_a_damaged_file_of_a_run_is_one_sentence_naming_it(workdir, capsys, name, text, message):
    run = workdir / "outputs" / "run"
    _hand_made_run(run)
    assert main(["report", str(run), "--out", str(workdir / "report")]) == 0
    assert "realnvp" in capsys.readouterr().out
    (run / name).write_text(text)
    assert main(["report", str(run), "--out", str(workdir / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genflow: error: ") and message in err and "\n" not in err, err
