"""RunDir: the run directory's layout and which run / which checkpoint a command uses."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from genflow.engine.run_dir import RunDir
from genflow.errors import GenflowError


def _run(tmp_path, name="run", checkpoints=("last.pt",), config=None) -> RunDir:
    run = RunDir(tmp_path / name)
    run.checkpoints.mkdir(parents=True)
    for ckpt in checkpoints:
        run.checkpoint(ckpt).write_bytes(b"x")
    if config is not None:
        run.config_file.parent.mkdir()
        OmegaConf.save(OmegaConf.create(config), run.config_file)
        OmegaConf.save(OmegaConf.create(["model=maf"]), run.overrides_file)
    return run


def test_layout(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint("best.pt") == tmp_path / "checkpoints" / "best.pt"
    assert run.metrics == tmp_path / "metrics.jsonl"
    assert run.picture("step", 20) == tmp_path / "samples" / "step_0000020.png"
    assert run.eval_json() == tmp_path / "eval.json"
    assert run.eval_json("val") == tmp_path / "eval_val.json"
    assert run.eval_json("test", "last.pt") == tmp_path / "eval_last.json"
    assert run.eval_json("val", "step_10.pt") == tmp_path / "eval_step_10_val.json"
    assert run.config_file == tmp_path / ".hydra" / "config.yaml"


def test_which_checkpoint(tmp_path):
    run = _run(tmp_path, checkpoints=("last.pt", "last.prev.pt"))
    # best falls back to last (a run stopped before its first validation)
    assert run.find_checkpoint("best") == run.checkpoint("last.pt")
    assert run.final_checkpoint(best_step=0) == run.checkpoint("last.pt")
    assert run.final_checkpoint(best_step=5) == run.checkpoint("best.pt")
    assert run.last_checkpoints() == [run.checkpoint("last.pt"), run.checkpoint("last.prev.pt")]
    with pytest.raises(GenflowError, match="no checkpoint 'step_7'"):
        run.find_checkpoint("step_7")
    # run= names a directory or a file; the file's run is the directory above checkpoints/
    located, ckpt = RunDir.locate(run.path, "last")
    assert located.path == run.path and ckpt == run.checkpoint("last.pt")
    located, ckpt = RunDir.locate(run.checkpoint("last.prev.pt"))
    assert located.path == run.path and ckpt == run.checkpoint("last.prev.pt")
    with pytest.raises(GenflowError, match="no such run directory or checkpoint file"):
        RunDir.locate(tmp_path / "nowhere")


def test_resume_candidates(tmp_path):
    run = _run(tmp_path, checkpoints=("last.pt", "last.prev.pt"))
    fresh = RunDir(tmp_path / "fresh")
    assert fresh.resume_candidates(None) == []
    assert fresh.resume_candidates("auto") == []  # nothing to continue: start fresh
    assert fresh.resume_candidates(str(run.path)) == run.last_checkpoints()
    assert fresh.resume_candidates(str(run.checkpoint("last.prev.pt"))) == [
        run.checkpoint("last.prev.pt")
    ]
    with pytest.raises(GenflowError, match="nor a run directory with checkpoints/last.pt"):
        fresh.resume_candidates(str(tmp_path / "fresh"))


def test_find_matching_picks_the_newest_run_with_the_same_config(tmp_path):
    config = {"output_root": str(tmp_path), "seed": 0, "resume": None}
    old = _run(tmp_path, "old", config=config)
    new = _run(tmp_path, "new", config=config)
    _run(tmp_path, "other", config={**config, "seed": 1})
    _run(tmp_path, "empty", checkpoints=(), config=config)  # no checkpoint: not resumable
    os.utime(old.checkpoint("last.pt"), (1, 1))
    found = RunDir.find_matching(OmegaConf.create({**config, "resume": "auto"}))
    assert found.path == new.path and found.stored_overrides() == ["model=maf"]
    match, (near, keys) = RunDir.nearest(OmegaConf.create({**config, "seed": 2}))
    assert match is None and near.path.name in ("new", "other")  # one key apart, the newest
    assert keys == [f"seed: {1 if near.path.name == 'other' else 0} -> 2"]
    # an interrupted run comes before a finished one, however new the finished one is
    new.eval_json().write_text("{}")  # tested after its last checkpoint: finished
    assert new.finished() and not old.finished()
    assert RunDir.find_matching(OmegaConf.create(config)).path == old.path


def test_lock_keeps_a_second_writer_out_and_a_dead_holder_is_stale(tmp_path):
    import socket
    import subprocess
    import sys

    run = RunDir(tmp_path / "run")
    with run.locked():
        assert (run.path / ".lock").read_text() == f"{socket.gethostname()} {os.getpid()}"
        with pytest.raises(GenflowError, match=f"is in use by process {os.getpid()}"):
            with run.locked():
                pass
    assert not (run.path / ".lock").exists()  # released
    # a process that died holding it (kill -9): the lock is stale and taken over
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (run.path / ".lock").write_text(f"{socket.gethostname()} {dead.stdout.strip()}")
    with run.locked():
        assert (run.path / ".lock").read_text().endswith(str(os.getpid()))
    # another machine's lock cannot be judged: held, and the message says how to clear it
    (run.path / ".lock").write_text("elsewhere 12345")
    with pytest.raises(GenflowError, match="in use by process 12345 on elsewhere"):
        with run.locked():
            pass
