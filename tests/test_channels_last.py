"""trainer.channels_last: the NHWC memory format changes the layout, never the numbers."""

from __future__ import annotations

import pytest
import torch
from conftest import MODEL_TINY, RUN_TINY, compose_config, run_dirs, run_genflow

from genflow.data.datasets import load_dataset
from genflow.tasks.common import build_model

# no dropout: its masks are drawn in memory order, so NHWC draws other (equally random) ones
IMAGE_MODELS = {
    **{name: MODEL_TINY[name] for name in ("nice", "maf", "pixelcnn")},
    "pixelcnnpp": [*MODEL_TINY["pixelcnnpp"], "model.dropout=0"],
    "realnvp": [*MODEL_TINY["realnvp"], "model.dropout=0"],
    "glow": [*MODEL_TINY["glow"], "model.dropout=0"],
    "vae": [*MODEL_TINY["vae"], "model.network=conv", "model.dropout=0"],
}


def loss_and_grads(cfg, channels_last: bool):
    torch.manual_seed(0)
    model = build_model(cfg.model).double()
    x = load_dataset(cfg.dataset).train[:16]
    model.initialize(x)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    loss = model(x).loss
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
def test_channels_last_gives_the_same_loss_and_gradients(name):
    cfg = compose_config([f"model={name}", *IMAGE_MODELS[name]])
    loss, grads = loss_and_grads(cfg, False)
    loss_nhwc, grads_nhwc = loss_and_grads(cfg, True)
    torch.testing.assert_close(loss_nhwc, loss, rtol=1e-9, atol=1e-9)
    assert grads.keys() == grads_nhwc.keys() and grads
    for key, grad in grads.items():
        torch.testing.assert_close(grads_nhwc[key], grad, rtol=1e-7, atol=1e-9)


def test_trainer_channels_last_trains_and_checkpoints_load(workdir):
    args = ["train", "model=glow", *MODEL_TINY["glow"], *RUN_TINY, "trainer.max_steps=4"]
    args += ["trainer.eval_every=4", "trainer.sample_every=4", "trainer.channels_last=true"]
    run_genflow(args, workdir)
    (run,) = run_dirs(workdir)
    run_genflow(["eval", f"run={run}", "device=cpu"], workdir)  # a plain model loads it
    assert (run / "eval.json").exists()
