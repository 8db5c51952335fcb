"""DDP on the CPU (gloo): two ranks are one process accumulating two micro-batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RUN_TINY, genflow_env, run_dirs, run_genflow

# Glow: ActNorm's data-dependent init runs on rank 0 and reaches rank 1 by broadcast; no
# dropout, so the only randomness is the dequantization noise of each micro-batch
GLOW = ["model=glow", "model.hidden_channels=8", "model.steps_per_level=2", "model.dropout=0"]
COMMON = [*GLOW, *RUN_TINY, "trainer.batch_size=16", "trainer.eval_every=4"]
COMMON += ["trainer.ckpt_every=4", "trainer.sample_every=8", "trainer.log_every=2"]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "genflow", "train", *args]
    proc = subprocess.run(
        command, cwd=cwd, env=genflow_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["step"] == 8
    return ckpt["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():  # equal up to the order of float sums (measured <= 3e-8)
        torch.testing.assert_close(b[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_ddp_two_ranks_match_one_process_and_resume_under_torchrun(tmp_path):
    one, spawned, launched = (tmp_path / name for name in ("one", "spawned", "torchrun"))
    for folder in (one, spawned, launched):
        folder.mkdir()
    steps = ["trainer.max_steps=8"]
    run_genflow(["train", *COMMON, *steps, "trainer.accumulate_steps=2"], one)
    run_genflow(["train", *COMMON, *steps, "device=ddp", "device.nproc_per_node=2"], spawned)
    # torchrun: four steps, then resume the same run directory to eight
    torchrun([*COMMON, "device=ddp", "trainer.max_steps=4"], launched)
    (first,) = run_dirs(launched)
    torchrun([*COMMON, *steps, "device=ddp", f"resume={first}"], launched)

    (reference,) = run_dirs(one)
    (ddp_run,) = run_dirs(spawned)  # one run directory for both ranks
    assert run_dirs(launched) == [first]
    for run in (ddp_run, first):
        assert_same_weights(weights(reference), weights(run))
        log = records(run)
        # rank 0 alone wrote: each step's train and val record once
        keys = [(r["step"], r["split"]) for r in log if r["split"] != "test"]
        assert len(keys) == len(set(keys))
        train = {r["step"]: r for r in log if r["split"] == "train"}
        assert list(train) == [2, 4, 6, 8]
        # the replicas were bit-identical at every validation: ActNorm init included
        val = [r for r in log if r["split"] == "val"]
        assert [r["step"] for r in val] == [4, 8]
        assert all(r["ddp_max_param_diff"] == 0.0 for r in val)
        # the logged loss is the mean over both ranks' examples, as one process logs it
        for r in records(reference):
            if r["split"] == "train":
                assert abs(train[r["step"]]["loss"] - r["loss"]) < 1e-5
    assert (first / "eval.json").exists() and (first / "samples" / "step_0000008.png").exists()


def test_slurm_launcher_preset_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from genflow.config import config_dir

    overrides = ["hydra/launcher=slurm_ddp", "device=ddp", "device.nproc_per_node=4"]
    overrides += ["hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 4)
    assert launcher.partition == "gpu" and launcher.signal_delay_s == 120
    assert cfg.device.type == "ddp" and cfg.device.nproc_per_node == 4


def test_a_submitit_job_runs_ddp_workers(tmp_path):
    # the SLURM path without a cluster: submitit's local executor runs the sweep's job in
    # its own process, and genflow starts two DDP workers inside it
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]
    args += [*COMMON, "trainer.max_steps=4", "trainer.sample_every=0"]
    args += ["device=ddp", "device.nproc_per_node=2"]
    run_genflow(args, tmp_path)
    (run,) = run_dirs(tmp_path)
    val = [r for r in records(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [4] and val[0]["ddp_max_param_diff"] == 0.0
    assert (run / "eval.json").exists() and (run / "checkpoints" / "last.pt").exists()
