"""Nothing is written outside a run directory: a file is replaced by a rename (a link at its path
is replaced, not written through), a folder that leads outside is refused, appends refuse links,
and a folder that cannot be written is one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, run_dirs, run_genflow

from genflow.engine.files import append_text, check_appendable, replacing, write_text
from genflow.errors import GenflowError


def _outside(tmp_path):
    """A file and a folder of the user's, outside any run directory."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes\n")
    return mine, mine / "notes.txt"


def test_a_write_replaces_a_link_instead_of_following_it(tmp_path):
    mine, notes = _outside(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").symlink_to(notes)
    write_text(run / "eval.json", "{}\n", run)
    assert notes.read_text() == "my own notes\n"
    assert not (run / "eval.json").is_symlink() and (run / "eval.json").read_text() == "{}\n"
    assert sorted(p.name for p in run.iterdir()) == ["eval.json"]  # no temporary left


def test_a_folder_that_leads_outside_is_refused(tmp_path):
    mine, notes = _outside(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples").symlink_to(mine, target_is_directory=True)
    with pytest.raises(GenflowError, match=r"samples leads outside the run directory .*run"):
        write_text(run / "samples" / "x.png", "x", run)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_an_append_refuses_a_link(tmp_path):
    mine, notes = _outside(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(notes)
    with pytest.raises(GenflowError, match="metrics.jsonl is a symbolic link"):
        append_text(run / "metrics.jsonl", "{}\n", run)
    assert notes.read_text() == "my own notes\n"
    append_text(run / "train.log", "a\n", run)
    append_text(run / "train.log", "b\n", run)
    assert (run / "train.log").read_text() == "a\nb\n" and check_appendable(run / "train.log")


def test_a_folder_that_cannot_be_written_is_one_sentence_and_an_error_keeps_the_old_file(tmp_path):
    (tmp_path / "not_a_folder").write_text("x")
    with pytest.raises(GenflowError, match=r"^cannot write .*not_a_folder/eval.json: "):
        write_text(tmp_path / "not_a_folder" / "eval.json", "{}")
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    with pytest.raises(KeyboardInterrupt), replacing(kept) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt  # stopped half-way
    assert kept.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "kept.json",
        "not_a_folder",
    ]


def test_eval_sample_resume_and_report_write_nothing_through_links(workdir):
    run_genflow(["train", *TINY], workdir)
    (run,) = run_dirs(workdir)
    mine, notes = _outside(workdir)
    before = notes.read_bytes()

    (run / "eval.json").unlink()
    (run / "eval.json").symlink_to(notes)
    run_genflow(["eval", f"run={run}", "device=cpu"], workdir)
    assert notes.read_bytes() == before and "bpd" in json.loads((run / "eval.json").read_text())

    samples = run / "samples"
    for picture in samples.iterdir():
        picture.rename(workdir / picture.name)
    samples.rmdir()
    samples.symlink_to(mine, target_is_directory=True)
    proc = run_genflow(["sample", f"run={run}", "device=cpu"], workdir, check=False)
    assert proc.returncode == 2 and "leads outside the run directory" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt"
    ]
    samples.unlink()

    metrics = run / "metrics.jsonl"
    metrics.rename(workdir / "metrics.jsonl")
    metrics.symlink_to(notes)
    proc = run_genflow(["train", f"resume={run}", "trainer.max_steps=25"], workdir, check=False)
    assert proc.returncode == 2 and "metrics.jsonl is a symbolic link" in proc.stderr, proc.stderr
    assert notes.read_bytes() == before
    metrics.unlink()
    (workdir / "metrics.jsonl").rename(metrics)

    config = run / ".hydra" / "config.yaml"  # read by nothing on resume, rewritten by it
    copy = workdir / "config_copy.yaml"
    copy.write_bytes(config.read_bytes())
    config.unlink()
    config.symlink_to(copy)
    kept = copy.read_bytes()
    run_genflow(["train", f"resume={run}", "trainer.max_steps=25"], workdir)
    assert copy.read_bytes() == kept and not config.is_symlink()

    proc = run_genflow(["report", str(run.parent), "--out", str(notes)], workdir, check=False)
    assert proc.returncode == 2 and "--out" in proc.stderr and "Traceback" not in proc.stderr
    assert notes.read_bytes() == before


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_eval_and_sample_write_to_out_when_the_run_cannot_be_written(workdir, monkeypatch):
    """out=<folder> takes eval's and sample's outputs and leaves the run as it was; a run that
    cannot be written is one sentence before the work, naming out=; so is an out= that cannot."""
    from conftest import compose_config

    import genflow.engine.files as files
    from genflow.tasks import eval as eval_task
    from genflow.tasks import sample as sample_task

    run_genflow(["train", *TINY], workdir)
    (run,) = run_dirs(workdir)
    before = _tree(run)
    elsewhere = workdir / "elsewhere"

    def command(name, *overrides):
        task = {"eval": eval_task, "sample": sample_task}[name]
        return task.run(compose_config([f"run={run}", "device=cpu", *overrides], name=name))

    summary = command("eval", f"out={elsewhere}")
    assert json.loads((elsewhere / "eval.json").read_text()) == summary
    drawn = command("sample", f"out={elsewhere}", "sample.n=4")
    assert Path(drawn["image"]).parent == elsewhere and Path(drawn["image"]).is_file()
    assert _tree(run) == before

    real_open = files.os.open

    def read_only(path, flags, *args):  # the suite runs as root, where a mode stops nothing
        if run in Path(path).parents and flags & files.os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(files.os, "open", read_only)
    for name in ("eval", "sample"):
        with pytest.raises(
            GenflowError, match=r"^cannot write .*: permission denied .* out=<folder>"
        ):
            command(name)
    assert _tree(run) == before
    monkeypatch.undo()
    (workdir / "a_file").write_text("x")
    with pytest.raises(GenflowError, match=r"^cannot write .*a_file/out: "):
        command("eval", f"out={workdir / 'a_file' / 'out'}")
    with pytest.raises(GenflowError, match=r"out='' is not valid; out must be null"):
        command("sample", "out=''")


def test_a_pipe_or_a_device_in_a_run_is_one_sentence_before_any_read(tmp_path):
    """A named pipe (a read waits forever) or a link to /dev/zero (a read never ends) where
    genflow reads is refused by every way into a run: locate (eval, sample, load_run), the
    resume's and train's checks, and report's discovery."""
    import os

    from genflow.engine.run_dir import RunDir
    from genflow.report import main as report_main

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model: {}\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.pt").symlink_to("/dev/zero")
    with pytest.raises(GenflowError, match=r"best.pt is a device, not a file; .*remove it$"):
        RunDir.locate(run)
    with pytest.raises(GenflowError, match=r"best.pt is a device"):
        RunDir(run).check_writable()
    (run / "checkpoints" / "best.pt").unlink()
    os.mkfifo(run / "eval.json")
    with pytest.raises(GenflowError, match=r"eval.json is a named pipe, not a file"):
        report_main([str(run), "--out", str(tmp_path / "report")])
