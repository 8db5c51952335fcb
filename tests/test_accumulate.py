"""trainer.accumulate_steps: n micro-batches of b make the same step as one batch of n * b."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import RUN_TINY, run_dirs, run_genflow


def test_two_micro_batches_of_16_step_like_one_batch_of_32(workdir):
    # a continuous toy (no dequantization noise), no batch norm (it couples the examples of a
    # batch), 20000 training points: the two batches of 16 at indices 2s and 2s + 1 are the
    # two halves of the batch of 32 at index s
    common = ["train", *RUN_TINY, "model=maf", "dataset=moons", "model.hidden_features=8"]
    common += ["model.num_layers=2", "model.batch_norm=false", "trainer.max_steps=4"]
    common += ["trainer.eval_every=4"]
    common += ["trainer.sample_every=0", "trainer.log_every=1"]
    run_genflow([*common, "trainer.batch_size=32"], workdir)
    run_genflow([*common, "trainer.batch_size=16", "trainer.accumulate_steps=2"], workdir)
    whole, accumulated = (
        torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"]
        for d in run_dirs(workdir)
    )
    for key, value in whole.items():  # equal up to float summation order (measured ~1e-11)
        torch.testing.assert_close(accumulated[key], value, rtol=1e-5, atol=1e-7)
    # the loss and the gradient norm are the whole batch's (a missing 1/n would double it)
    logs = [
        [json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()]
        for d in run_dirs(workdir)
    ]
    train = [[r for r in log if r["split"] == "train"] for log in logs]
    assert len(train[0]) == len(train[1]) == 4
    for a, b in zip(*train, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # MADE's output layers start at zero: non-zero now means the four steps really trained
    outputs = [v for k, v in whole.items() if k.endswith("output.weight")]
    assert outputs and all(v.abs().sum() > 0 for v in outputs)
