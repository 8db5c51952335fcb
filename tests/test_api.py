"""genflow.load_run: a trained run from Python reproduces genflow eval, for every family."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MODEL_TINY, compose_config
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

import genflow
from genflow.engine.checkpoint import save_checkpoint
from genflow.errors import GenflowError
from genflow.tasks import eval as eval_task
from genflow.tasks.common import build_model

DIGITS = torch.from_numpy(load_digits().data[:64]).to(torch.long).view(64, 1, 8, 8)


def _stored_run(tmp_path, name: str):
    """A run directory holding a best.pt of model ``name`` (perturbed off its start), as
    genflow train would leave it."""
    cfg = compose_config([f"model={name}", *MODEL_TINY[name]])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.initialize(DIGITS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {
        "model": model.state_dict(),
        "ema": None,
        "trainer": {"step": 7},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    run_dir = tmp_path / name
    save_checkpoint(state, run_dir / "checkpoints" / "best.pt")
    return run_dir


@pytest.mark.parametrize("name", sorted(MODEL_TINY))
def test_load_run_reproduces_genflow_eval(tmp_path, name, capsys):
    run_dir = _stored_run(tmp_path, name)
    cfg = compose_config([f"run={run_dir}", "device=cpu", "eval.iw_samples=16"], name="eval")
    summary = eval_task.run(cfg)
    capsys.readouterr()

    run = genflow.load_run(run_dir, iw_samples=16 if name in ("vae", "hvae") else None)
    assert isinstance(run, genflow.Run) and run.step == 7 and run.path == run_dir
    assert not run.model.training and run.config.model._target_.endswith(type(run.model).__name__)
    assert run.evaluate("test")["bpd"] == pytest.approx(summary["bpd"], rel=1e-12)
    # the same number from log_prob of the raw test images, with evaluation's seed
    test = run.data("test")
    assert test.dtype == torch.uint8 and len(test) == summary["num_examples"]
    bpd = -run.log_prob(test, seed=0).double().mean() / (64 * math.log(2))
    assert bpd.item() == pytest.approx(summary["bpd"], rel=1e-6)

    samples = run.sample(4, seed=3)
    assert torch.equal(samples, run.sample(4, seed=3)) and samples.shape == (4, 1, 8, 8)
    assert (samples == samples.round()).all() and 0 <= samples.min() and samples.max() <= 16
    if run.model.can_encode:
        z = run.model.encode(test[:3].long())
        assert run.model.decode(z).shape == (3, 1, 8, 8)


def test_log_prob_refuses_what_the_model_does_not_score(tmp_path):
    run = genflow.load_run(_stored_run(tmp_path, "realnvp") / "checkpoints" / "best.pt")
    with pytest.raises(GenflowError, match="non-integer values"):
        run.log_prob(torch.rand(2, 1, 8, 8))  # images scaled to [0, 1]
    with pytest.raises(GenflowError, match=r"shape \(1, 28, 28\); this model scores \(1, 8, 8\)"):
        run.log_prob(torch.zeros(2, 1, 28, 28, dtype=torch.long))
    with pytest.raises(GenflowError, match=r"outside \[0, 17\)"):
        run.log_prob(torch.full((2, 1, 8, 8), 255))
    with pytest.raises(GenflowError, match="has no importance samples"):
        genflow.load_run(run.path, iw_samples=5)
