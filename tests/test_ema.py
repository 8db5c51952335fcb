"""trainer.ema: the average follows the formula, is what eval sees, and survives a resume."""

from __future__ import annotations

import json
import shutil

import torch
from conftest import TINY, run_dirs, run_genflow
from omegaconf import OmegaConf
from torch import nn

from genflow.data.datasets import load_dataset
from genflow.engine.ema import averaged_weights, build_ema, update_ema
from genflow.engine.evaluate import evaluate
from genflow.tasks.common import build_model


def test_ema_follows_the_decay_formula_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.BatchNorm1d(3)
    ema = build_ema(model, 0.9)
    expected = None
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(torch.randn(3))
        model(torch.randn(8, 3))  # moves the running statistics (buffers)
        update_ema(ema, model)
        w = model.weight.detach().clone()
        expected = w if expected is None else 0.9 * expected + 0.1 * w  # first update copies
    torch.testing.assert_close(ema.module.weight, expected)
    torch.testing.assert_close(ema.module.running_mean, model.running_mean)
    assert build_ema(model, None) is None


def test_ema_weights_are_tested_evaluated_and_resumed_exactly(workdir):
    args = ["train", *TINY, "trainer.ema=0.9", "trainer.sample_every=0", "optimizer.lr=3e-3"]
    run_genflow(args, workdir)
    [run_dir] = run_dirs(workdir)
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    raw, averaged = ckpt["model"], averaged_weights(ckpt["ema"])
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)
    # eval.json is the test score of the averaged weights
    model = build_model(ckpt["config"]["model"])
    model.load_state_dict(averaged)
    test = load_dataset(OmegaConf.create(ckpt["config"]["dataset"])).test
    expected = evaluate(model, test, 500)["bpd"]
    assert json.loads((run_dir / "eval.json").read_text())["bpd"] == expected
    summary = json.loads(run_genflow(["eval", f"run={run_dir}"], workdir).stdout.splitlines()[-1])
    assert summary["bpd"] == expected
    # resume from step 10 and reach the same average as the uninterrupted run
    final = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    shutil.copy(run_dir / "checkpoints" / "last.prev.pt", run_dir / "checkpoints" / "last.pt")
    assert (
        torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["trainer"]["step"] == 10
    )
    run_genflow(["train", f"resume={run_dir}"], workdir)
    again = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert again["trainer"]["step"] == 20
    for key, value in final["ema"].items():
        assert torch.equal(again["ema"][key], value), key
