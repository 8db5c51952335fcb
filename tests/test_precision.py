"""trainer.precision: autocast rounds the networks, never the objective's reductions."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import MODEL_TINY, RUN_TINY, TINY, compose_config, run_dirs, run_genflow

from genflow.data.datasets import load_dataset
from genflow.engine.precision import autocast
from genflow.numeric import full_precision, sum_except_batch
from genflow.tasks.common import build_model


def test_reductions_run_in_at_least_fp32():
    half = torch.randn(3, 4).bfloat16()
    assert sum_except_batch(half).dtype == torch.float32
    assert full_precision(torch.randn(2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("name", sorted(MODEL_TINY))
def test_bf16_objective_stays_fp32_and_close_to_fp32(name):
    cfg = compose_config([f"model={name}", *MODEL_TINY[name]])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    x = load_dataset(cfg.dataset).train[:32]
    model.initialize(x)
    torch.manual_seed(1)
    full = model(x).loss
    torch.manual_seed(1)
    with autocast("bf16", torch.device("cpu")):
        mixed = model(x).loss
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert abs(mixed.item() - full.item()) < 0.05 * abs(full.item())


def test_bf16_training_run_keeps_fp32_weights_and_finite_metrics(workdir):
    run_genflow(["train", *TINY, "trainer.precision=bf16", "trainer.sample_every=0"], workdir)
    [run_dir] = run_dirs(workdir)
    weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    # autocast rounds the networks' arithmetic; the weights it trains stay fp32
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    summary = json.loads((run_dir / "eval.json").read_text())
    assert 0 < summary["bpd"] < 8
    records = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in records if r["split"] == "train")  # no NaN


def test_fp16_training_run_scales_the_loss_and_checkpoints_the_scaler(workdir):
    # with trainer.deterministic on, as benchmarks/gpu.py's resume check runs
    args = ["trainer.precision=fp16", "trainer.sample_every=0", "trainer.deterministic=true"]
    run_genflow(["train", *TINY, *args], workdir)
    [run_dir] = run_dirs(workdir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # the GradScaler's state travels with the run
    assert 0 < json.loads((run_dir / "eval.json").read_text())["bpd"] < 8


def test_compiled_training_matches_eager_and_checkpoints_load_without_compile(workdir):
    # a continuous toy: no dequantization noise, so eager and compiled see the same numbers
    tiny = ["model=maf", "dataset=moons", "model.hidden_features=8", "model.num_layers=1"]
    args = ["train", *RUN_TINY, *tiny, "trainer.max_steps=3", "trainer.eval_every=3"]
    args += ["trainer.sample_every=0", "trainer.log_every=1"]
    run_genflow([*args, "trainer.compile=true"], workdir)
    run_genflow(args, workdir)
    compiled, eager = run_dirs(workdir)
    for run_dir in (compiled, eager):  # plain state dicts, no _orig_mod prefixes
        keys = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        assert not any(k.startswith("_orig_mod") for k in keys)
    losses = [
        [json.loads(r)["loss"] for r in (d / "metrics.jsonl").read_text().splitlines()[:3]]
        for d in (compiled, eager)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    summary = json.loads(run_genflow(["eval", f"run={compiled}"], workdir).stdout.splitlines()[-1])
    assert 0 < summary["bpd"] < 8


def test_trainer_deterministic_turns_on_torch_deterministic_algorithms(monkeypatch):
    """trainer.deterministic=true: deterministic algorithms (warn-only, so an op without one
    names itself), the cuBLAS workspace they need, no cuDNN autotuning."""
    from genflow.engine.device import make_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        make_deterministic()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = benchmark
