"""The trainer loop's contracts that the CLI tests do not reach directly."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from genflow.data import DataSplits, load_dataset
from genflow.engine.optim import build_optimizer, build_scheduler
from genflow.engine.run_logger import RunLogger
from genflow.engine.trainer import Trainer
from genflow.errors import GenflowError
from genflow.models.base import GenerativeModel, Output


class NaNAfter(GenerativeModel):
    """A one-parameter model whose loss turns NaN at a chosen step."""

    def __init__(self, bad_step: int):
        super().__init__((2,))
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.bad_step, self.calls = bad_step, 0

    def forward(self, x):
        self.calls += 1
        loss = (self.weight * x).pow(2).mean()
        if self.calls == self.bad_step:
            loss = loss * float("nan")
        return Output(loss, {"bpd": loss.detach(), "nll": loss.detach()})

    def evaluate(self, x):
        value = (self.weight * x).pow(2).mean(1).detach()
        return {"bpd": value, "nll": value}


def _cfg(**trainer):
    base = dict(
        max_steps=10,
        batch_size=4,
        eval_batch_size=8,
        log_every=1,
        eval_every=5,
        ckpt_every=5,
        sample_every=0,
        sample_n=4,
        grad_clip=1.0,
        patience=None,
        progress_bar=False,
    )
    return OmegaConf.create({"seed": 0, "trainer": {**base, **trainer}})


def _trainer(model, tmp_path, **trainer):
    cfg = _cfg(**trainer)
    data = torch.randn(32, 2)
    optimizer = build_optimizer(
        model, OmegaConf.create(dict(name="adam", lr=1e-2, betas=[0.9, 0.999], weight_decay=0.0))
    )
    scheduler = build_scheduler(optimizer, OmegaConf.create(dict(name="constant")), 10)
    return Trainer(
        cfg, model, optimizer, scheduler, DataSplits(data, data[:8], data[:8]), tmp_path, {}
    )


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    trainer = _trainer(NaNAfter(bad_step=7), tmp_path)
    with pytest.raises(GenflowError, match="at step 7"):
        trainer.fit(RunLogger(tmp_path, None, {}))
    assert (
        torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["trainer"]["step"] == 5
    )


def test_patience_stops_early_and_keeps_the_best(tmp_path):
    class Worsening(NaNAfter):
        def evaluate(self, x):  # validation gets worse at every evaluation
            value = torch.full((len(x),), float(self.calls))
            return {"bpd": value, "nll": value}

    trainer = _trainer(Worsening(bad_step=-1), tmp_path, max_steps=100, eval_every=2, patience=2)
    state = trainer.fit(RunLogger(tmp_path, None, {}))
    assert state.stopped_early and state.step == 6 and state.best_step == 2


def test_cosine_schedule_warms_up_then_decays():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(
        optimizer, OmegaConf.create(dict(name="cosine", warmup_steps=10, min_lr_ratio=0.1)), 110
    )
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_bad_optimizer_values_are_rejected():
    model = torch.nn.Linear(1, 1)
    with pytest.raises(GenflowError, match="optimizer.lr must be positive"):
        build_optimizer(
            model, OmegaConf.create(dict(name="adam", lr=-1.0, betas=[0.9, 0.99], weight_decay=0))
        )
    with pytest.raises(GenflowError, match="valid optimizers: adam, adamw, adamax"):
        build_optimizer(
            model, OmegaConf.create(dict(name="sgd", lr=1.0, betas=[0.9, 0.99], weight_decay=0))
        )


def test_image_folder_loads_resizes_and_splits(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (20, 24), color=(10 * i, 5, 200)).save(
                tmp_path / "imgs" / cls / f"{i}.png"
            )
    cfg = OmegaConf.create(
        dict(
            name="image_folder",
            root=str(tmp_path),
            path="imgs",
            image_size=8,
            channels=3,
            shape=[3, 8, 8],
            val_fraction=0.1,
            test_fraction=0.1,
            split_seed=0,
            n_bits=8,
        )
    )
    splits = load_dataset(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 2, 2)
    assert splits.train.dtype == torch.uint8 and splits.train.shape[1:] == (3, 8, 8)
    assert int(splits.train[:, 2].min()) == 200  # the blue channel survives the resize
    cfg.path = "missing"
    with pytest.raises(GenflowError, match="does not exist"):
        load_dataset(cfg)
