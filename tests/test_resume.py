"""Resuming and recovering: resume=<dir>, resume=auto, stops and crashes at any step,
damaged checkpoints, non-finite steps, and run directories that are refused or in use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, genflow_env, read_records, run_dirs, run_genflow


def start_genflow(args: list[str], cwd: Path) -> subprocess.Popen:
    """genflow in the background, to be stopped or raced while it trains."""
    return subprocess.Popen(
        [sys.executable, "-m", "genflow", *args],
        cwd=cwd,
        env=genflow_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_resume_run_dir_continues_the_step_count(workdir):
    run_genflow(["train", *TINY], workdir)
    [run_dir] = run_dirs(workdir)
    proc = run_genflow(["train", f"resume={run_dir}", "trainer.max_steps=30"], workdir)
    assert run_dirs(workdir) == [run_dir]  # continued in place, no new run directory
    assert "resumed from" in proc.stdout + proc.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["step"] == 30
    train_steps = [r["step"] for r in read_records(run_dir) if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 30


KILL_RUN = [
    *TINY,
    "trainer.max_steps=300",
    "trainer.ckpt_every=10",
    "trainer.eval_every=50",
    "trainer.log_every=1",
    "trainer.sample_every=0",
    "optimizer.lr=3e-3",
]


def _final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    run_genflow(["train", *KILL_RUN], root)
    [run_dir] = run_dirs(root)
    return _final_params(run_dir)


@pytest.mark.parametrize(
    ("sig", "stop_at"),
    [
        (signal.SIGKILL, 37),  # before the first validation (step 50)
        (signal.SIGKILL, 263),  # after several validations, between checkpoints
        (signal.SIGUSR1, 205),  # SLURM's warning signal; SIGTERM's stop and exit code are
        # tested in test_trainer and by the lock test below, through the same guard
    ],
    ids=["kill-9@37", "kill-9@263", "sigusr1@205"],
)
def test_stopped_run_resumed_with_resume_auto_reproduces_uninterrupted_run(
    workdir, uninterrupted, sig, stop_at
):
    """kill -9 loses at most the steps since the last checkpoint; SIGTERM / SIGUSR1 (what SLURM
    sends) finish the step, write last.pt and exit with 128 + signal. Either way, resume=auto
    ends with parameters bit-identical to a run that was never stopped."""
    proc = start_genflow(["train", *KILL_RUN], workdir)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:  # genflow's own short-lived probe directories may vanish mid-walk
            metrics = list(workdir.glob("outputs/**/metrics.jsonl"))
        except FileNotFoundError:
            continue
        if metrics and metrics[0].read_text().count('"split": "train"') >= stop_at:
            os.kill(proc.pid, sig)
            break
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=120)
    [run_dir] = run_dirs(workdir)
    stopped_at = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["trainer"][
        "step"
    ]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        assert 0 < stopped_at < 300
    else:
        assert proc.returncode == 128 + sig, stderr
        assert f"stopped on {signal.Signals(sig).name} after step {stopped_at}; saved" in stderr
        assert "Traceback" not in stderr and stop_at <= stopped_at < 300

    out = run_genflow(["train", *KILL_RUN, "resume=auto"], workdir)
    assert run_dirs(workdir) == [run_dir]
    assert f"at step {stopped_at}" in out.stdout + out.stderr
    resumed = _final_params(run_dir)
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name
    train_steps = [r["step"] for r in read_records(run_dir) if r["split"] == "train"]
    assert train_steps == list(range(1, 301))  # stale records of the lost steps were dropped


def test_truncated_last_checkpoint_falls_back_to_the_previous_one(workdir):
    run_genflow(["train", *TINY], workdir)
    [run_dir] = run_dirs(workdir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:2048])
    out = run_genflow(["train", *TINY, "resume=auto"], workdir)
    log = out.stdout + out.stderr
    assert "last.pt is truncated or corrupted" in log and "last.prev.pt at step 10" in log
    assert torch.load(last, weights_only=True)["trainer"]["step"] == 20
    # the good step-10 checkpoint was not rotated away by the corrupt file
    previous = torch.load(last.with_name("last.prev.pt"), weights_only=True)
    assert previous["trainer"]["step"] == 10 and "moved the unreadable" in log


def test_injected_nan_is_skipped_and_the_run_completes(workdir):
    proc = run_genflow(["train", *TINY, "trainer.fault_injection.nan_loss_at_steps=[7]"], workdir)
    [run_dir] = run_dirs(workdir)
    skipped = [r for r in read_records(run_dir) if r.get("skipped_step")]
    assert [r["step"] for r in skipped] == [7] and skipped[0]["loss"] == "nan"
    assert "step 7: non-finite loss or gradient" in proc.stdout + proc.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["step"] == 20 and ckpt["trainer"]["skipped_steps"] == 1
    assert (run_dir / "eval.json").is_file()


def test_a_run_diverging_before_its_first_checkpoint_rolls_back_and_completes(workdir):
    nan_steps = "trainer.fault_injection.nan_loss_at_steps=[3,4,5,6,7]"  # ckpt_every=10
    proc = run_genflow(["train", *TINY, nan_steps], workdir)
    [run_dir] = run_dirs(workdir)
    [rollback] = [r for r in read_records(run_dir) if r.get("rollback")]
    assert rollback["from_step"] == 7 and rollback["step"] == 0 and rollback["lr_scale"] == 0.5
    assert "the state kept in memory" in proc.stdout + proc.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["step"] == 20 and ckpt["trainer"]["rollbacks"] == 1
    assert (run_dir / "eval.json").is_file()


def test_resume_auto_without_a_matching_run_starts_fresh(workdir):
    proc = run_genflow(["train", *TINY, "trainer.max_steps=5", "resume=auto"], workdir)
    assert "starting fresh" in proc.stdout + proc.stderr
    [first] = run_dirs(workdir)
    # a different batch size: a new run, and the message names what differed
    proc = run_genflow(
        ["train", *TINY, "trainer.max_steps=5", "trainer.batch_size=16", "resume=auto"], workdir
    )
    nearest = first.relative_to(workdir)
    assert f"the nearest, {nearest}, differs in trainer.batch_size: 32 -> 16" in proc.stderr
    assert len(run_dirs(workdir)) == 2


def test_resume_auto_continues_a_finished_run_to_more_steps_without_duplicate_results(workdir):
    run_genflow(["train", *TINY, "trainer.max_steps=10"], workdir)
    [run_dir] = run_dirs(workdir)
    # the progress bar, the logger and the step budget do not make a run different
    more = ["trainer.max_steps=20", "trainer.progress_bar=true", "resume=auto"]
    run_genflow(["train", *TINY, *more], workdir)
    again = run_genflow(["train", *TINY, *more], workdir)  # finished: tests again, no more
    assert run_dirs(workdir) == [run_dir] and "at step 20" in again.stdout + again.stderr
    tests = [r for r in read_records(run_dir) if r["split"] == "test"]
    # one test record, at the end, as a run to 20 steps that never stopped would have
    assert [r["step"] for r in tests] == [20]


def test_a_refused_start_changes_nothing_in_an_existing_run(workdir):
    """A resume that cannot continue the run, and a fresh run pointed at an existing run
    directory, are refused before anything in that directory changes; train.log says why."""
    run_genflow(["train", *TINY], workdir)
    [run_dir] = run_dirs(workdir)
    files = ["eval.json", "metrics.jsonl", ".hydra/config.yaml", ".hydra/overrides.yaml"]
    files += ["checkpoints/last.pt", "checkpoints/best.pt"]
    before = {name: (run_dir / name).read_bytes() for name in files}
    refused = run_genflow(["train", f"resume={run_dir}", "model=maf"], workdir, check=False)
    assert refused.returncode == 2 and "and this command line do not compose" in refused.stderr
    wider = [f"resume={run_dir}", "model.hidden_channels=16"]
    refused = run_genflow(["train", *wider], workdir, check=False)
    assert refused.returncode == 2 and "does not fit this model config" in refused.stderr
    again = run_genflow(["train", *TINY, f"hydra.run.dir={run_dir}"], workdir, check=False)
    assert again.returncode == 2 and "already holds a run; continue it with" in again.stderr
    assert {name: (run_dir / name).read_bytes() for name in files} == before
    assert "already holds a run" in (run_dir / "train.log").read_text()


def test_a_second_process_cannot_train_in_a_run_directory_in_use(workdir):
    """Two resumes of one run at once would overwrite each other's checkpoints: the run
    directory is locked while a process trains there; the lock goes when it stops."""
    args = ["train", *TINY, "trainer.max_steps=100000", "trainer.eval_every=100000"]
    proc = start_genflow(args, workdir)
    deadline = time.time() + 120
    while time.time() < deadline and not list(workdir.glob("outputs/**/checkpoints/last.pt")):
        time.sleep(0.05)
    [run_dir] = run_dirs(workdir)
    second = run_genflow(["train", f"resume={run_dir}"], workdir, check=False)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    assert f"run directory {run_dir} is in use by process {proc.pid}" in second.stderr
    assert proc.returncode == 128 + signal.SIGTERM and not (run_dir / ".lock").exists()


def test_a_resume_with_another_learning_rate_goes_on_at_that_rate(workdir):
    """optimizer.lr on resume rescales the restored optimizer and schedule (it was silently
    kept at the old rate), and resume=auto treats optimizer.lr as free, as the NaN-stop
    message's advice needs."""
    constant = ["optimizer/scheduler=constant", "optimizer.scheduler.warmup_steps=0"]
    run_genflow(["train", *TINY, *constant, "trainer.max_steps=10", "trainer.log_every=1"], workdir)
    [run_dir] = run_dirs(workdir)
    more = ["trainer.max_steps=14", "trainer.log_every=1", "optimizer.lr=1e-4", "resume=auto"]
    proc = run_genflow(["train", *TINY, *constant, *more], workdir)
    assert run_dirs(workdir) == [run_dir]
    assert "the schedule goes on from 0.0001" in proc.stdout + proc.stderr
    lrs = {r["step"]: r["lr"] for r in read_records(run_dir) if r["split"] == "train"}
    assert lrs[10] == pytest.approx(1e-3)
    assert [lrs[s] for s in range(11, 15)] == pytest.approx([1e-4] * 4)


WRITER = """
import sys, torch
from genflow.engine.checkpoint import save_checkpoint
path = sys.argv[1]
big = {"model": {"w": torch.ones(60_000_000)}, "trainer": {"step": 2}, "config": {}}
print("writing", flush=True)
save_checkpoint(big, path, keep_previous=True)
print("done", flush=True)
"""


def test_kill_9_in_the_middle_of_a_checkpoint_write_loses_nothing(tmp_path):
    """SIGKILL while the new last.pt (240 MB) is being written: last.pt is still the earlier,
    complete checkpoint, the partial file is only a temporary that the next start removes."""
    from genflow.engine.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint

    path = tmp_path / "checkpoints" / "last.pt"
    config = {"model": {"_target_": "genflow.models.realnvp.RealNVP"}}
    save_checkpoint(
        {"model": {"w": torch.zeros(3)}, "trainer": {"step": 1}, "config": config}, path
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 60
    temporaries: list[Path] = []
    while not temporaries and time.monotonic() < deadline:  # the write has begun
        temporaries = [p for p in path.parent.glob(".last.tmp-*.pt") if p.stat().st_size > 0]
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert temporaries, "the writer never started its temporary file"
    assert writer.returncode == -signal.SIGKILL  # killed mid-write, not finished
    assert load_checkpoint(path)["trainer"]["step"] == 1  # the earlier checkpoint, whole
    remove_stale_temporaries(path.parent)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
