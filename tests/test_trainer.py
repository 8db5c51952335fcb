"""The trainer loop's contracts that the CLI tests do not reach directly."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from genflow.config import config_dir
from genflow.data import DataSplits, load_dataset
from genflow.engine.checkpoint import load_checkpoint
from genflow.engine.optim import build_optimizer, build_scheduler
from genflow.engine.preemption import Preempted
from genflow.engine.run_logger import RunLogger
from genflow.engine.trainer import Trainer
from genflow.engine.trainer_config import TrainerConfig
from genflow.errors import GenflowError
from genflow.models.base import GenerativeModel, Output

# small-run settings over conf/trainer/default.yaml (where every default lives)
SMALL = dict(
    max_steps=10,
    batch_size=4,
    eval_batch_size=8,
    log_every=1,
    eval_every=5,
    ckpt_every=5,
    sample_every=0,
    sample_n=4,
    grad_clip=1.0,
    progress_bar=False,
    max_bad_steps=3,
)


def _tcfg(**trainer) -> TrainerConfig:
    defaults = OmegaConf.load(config_dir() / "trainer" / "default.yaml")
    return TrainerConfig.from_cfg(OmegaConf.merge(defaults, SMALL, trainer))


def _trainer(model, tmp_path, lr=1e-2, **trainer):
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(
        model, OmegaConf.create(dict(name="adam", lr=lr, betas=[0.9, 0.999], weight_decay=0.0))
    )
    scheduler = build_scheduler(optimizer, OmegaConf.create(dict(name="constant")), 10)
    splits = DataSplits(data, data[:8], data[:8])
    return Trainer(_tcfg(**trainer), 0, model, optimizer, scheduler, splits, tmp_path, {})


class Quadratic(GenerativeModel):
    """A tiny well-behaved model for the fault-injection tests."""

    def __init__(self):
        super().__init__((2,))
        self.layer = torch.nn.Linear(2, 2)

    def forward(self, x):
        loss = self.layer(x).pow(2).mean()
        return Output(loss, {"bpd": loss.detach(), "nll": loss.detach()})

    def log_prob(self, x):
        return -self.layer(x).pow(2).mean(1)

    def sample(self, n, temperature=1.0):
        return temperature * torch.randn(n, 2)

    def evaluate(self, x):
        value = self.layer(x).pow(2).mean(1).detach()
        return {"bpd": value, "nll": value}


class Exploding(torch.nn.Linear):
    """A linear layer whose output turns infinite from a chosen call on, for good."""

    def __init__(self, from_call: int):
        super().__init__(2, 2)
        self.from_call, self.calls = from_call, 0

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out * torch.inf if self.calls >= self.from_call else out


class BlowsUp(Quadratic):
    def __init__(self, from_call: int):
        super().__init__()
        self.hidden = Exploding(from_call)

    def forward(self, x):
        loss = self.layer(self.hidden(x)).pow(2).mean()
        return Output(loss, {"bpd": loss.detach(), "nll": loss.detach()})


def test_non_finite_steps_stop_the_run_naming_step_terms_and_layer(tmp_path):
    trainer = _trainer(BlowsUp(from_call=7), tmp_path, on_bad_steps="stop", max_bad_steps=2)
    with pytest.raises(GenflowError) as err:
        trainer.fit(RunLogger(tmp_path, None, {}))
    message = str(err.value)
    assert "training stopped at step 8" in message and "2 non-finite steps in a row" in message
    assert "loss terms: loss=" in message and "layer 'hidden'" in message
    assert (
        torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["trainer"]["step"] == 5
    )


def test_a_single_nan_step_is_skipped_and_the_run_completes(tmp_path):
    trainer = _trainer(Quadratic(), tmp_path, fault_injection={"nan_loss_at_steps": [4]})
    state = trainer.fit(RunLogger(tmp_path, None, {}))
    assert state.step == 10 and state.skipped_steps == 1 and state.rollbacks == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped_step")] == [4]


def test_a_nan_step_under_fp16_loss_scaling_is_skipped_and_the_run_goes_on(tmp_path):
    """With a GradScaler the skipped step must still close its unscale_ (scaler.update), or
    the next step's unscale_ raises; the scale is lowered, as after an overflow."""
    trainer = _trainer(
        Quadratic(), tmp_path, precision="fp16", fault_injection={"nan_loss_at_steps": [4]}
    )
    state = trainer.fit(RunLogger(tmp_path, None, {}))
    assert state.step == 10 and state.skipped_steps == 1


def test_grad_skip_skips_updates_whose_gradient_is_too_large_and_counts_them(tmp_path):
    """trainer.grad_skip (VDVAE's stabiliser): a finite step whose gradient norm is over the
    threshold leaves the weights as they were, is counted, and is not a fault; under it,
    training is exactly as without the option."""
    for name in ("all", "none", "high"):
        (tmp_path / name).mkdir()
    torch.manual_seed(0)
    model = Quadratic()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    state = _trainer(model, tmp_path / "all", grad_skip=1e-12).fit(
        RunLogger(tmp_path / "all", None, {})
    )
    assert state.step == 10 and state.grad_skipped_steps == 10 and state.skipped_steps == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, start[key])
    records = [
        json.loads(line) for line in (tmp_path / "all" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["grad_skipped_steps"] for r in records if r["split"] == "train"] == list(range(1, 11))
    saved = torch.load(tmp_path / "all" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["trainer"]["grad_skipped_steps"] == 10

    finals = []
    for name, skip in (("none", None), ("high", 1e12)):
        torch.manual_seed(0)
        model = Quadratic()
        state = _trainer(model, tmp_path / name, grad_skip=skip).fit(
            RunLogger(tmp_path / name, None, {})
        )
        assert state.grad_skipped_steps == 0
        finals.append(model.layer.weight.detach().clone())
    assert torch.equal(finals[0], finals[1]) and not torch.equal(finals[0], start["layer.weight"])


def test_repeated_bad_steps_roll_back_with_a_lower_learning_rate(tmp_path):
    trainer = _trainer(
        Quadratic(), tmp_path, max_bad_steps=2, fault_injection={"nan_loss_at_steps": [7, 8]}
    )
    state = trainer.fit(RunLogger(tmp_path, None, {}))
    assert state.step == 10 and state.rollbacks == 1 and state.lr_scale == 0.5
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("rollback") == 1 and r["from_step"] == 8 and r["step"] == 5 for r in records)
    resumed = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["trainer"]["lr_scale"] == 0.5  # a resumed run keeps the cut


def test_bad_steps_before_the_first_checkpoint_roll_back_to_the_start(tmp_path):
    """No checkpoint on disk yet: the run rolls back to the state it started from, kept in
    memory, and from there is exactly a run started with the lower learning rate."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("all", "none", "high"):
        (tmp_path / name).mkdir()
    torch.manual_seed(0)
    model = Quadratic()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(
        model, tmp_path / "a", max_bad_steps=2, fault_injection={"nan_loss_at_steps": [2, 3]}
    )
    state = trainer.fit(RunLogger(tmp_path / "a", None, {}))
    assert state.step == 10 and state.rollbacks == 1 and state.lr_scale == 0.5
    records = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(r.get("rollback") == 1 and r["from_step"] == 3 and r["step"] == 0 for r in records)
    fresh = Quadratic()
    fresh.load_state_dict(start)
    plain = _trainer(fresh, tmp_path / "b", lr=0.5e-2)
    plain.fit(RunLogger(tmp_path / "b", None, {}))
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=0, atol=0)


def test_a_second_rollback_to_an_older_checkpoint_halves_the_rate_again(tmp_path):
    """The second rollback lands on last.pt from before the first one: the rate must be
    lr_scale (0.25) x the configured one, not 0.5 x what that checkpoint's scheduler held."""
    trainer = _trainer(
        Quadratic(),
        tmp_path,
        max_steps=12,
        max_bad_steps=2,
        fault_injection={"nan_loss_at_steps": [7, 8, 9, 10]},
    )
    state = trainer.fit(RunLogger(tmp_path, None, {}))
    assert state.step == 12 and state.rollbacks == 2 and state.lr_scale == 0.25
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-2)
    assert trainer.scheduler.base_lrs == [pytest.approx(0.25e-2)]


def test_max_minutes_stops_checkpoints_and_a_larger_budget_resumes(tmp_path, monkeypatch):
    """A fake clock that each training forward advances by one second: a 3.5 s budget ends
    the run after step 4 with a validation and a checkpoint there; the spent time is in the
    checkpoint, so a resume with the same budget does nothing and a larger one goes on."""
    clock = {"now": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])

    class Ticking(Quadratic):
        def forward(self, x):
            clock["now"] += 1.0
            return super().forward(x)

    budget = 3.5 / 60
    trainer = _trainer(Ticking(), tmp_path, max_minutes=budget)
    state = trainer.fit(RunLogger(tmp_path, None, {}))
    assert state.step == 4 and state.train_seconds == 4.0 and state.best_step == 4
    last = tmp_path / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["trainer"]["step"] == 4
    again = _trainer(Ticking(), tmp_path, max_minutes=budget)
    again.restore(last)
    assert again.fit(RunLogger(tmp_path, None, {})).step == 4
    more = _trainer(Ticking(), tmp_path, max_minutes=7.5 / 60)
    more.restore(last)
    assert more.fit(RunLogger(tmp_path, None, {})).step == 8


def test_rollbacks_run_out_and_then_the_run_stops(tmp_path):
    trainer = _trainer(BlowsUp(from_call=7), tmp_path, max_bad_steps=2, max_rollbacks=1)
    with pytest.raises(GenflowError, match="after 1 rollbacks"):
        trainer.fit(RunLogger(tmp_path, None, {}))


def test_corrupted_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    trainer = _trainer(Quadratic(), tmp_path)
    trainer.fit(RunLogger(tmp_path, None, {}))
    last, previous = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "last.prev.pt"
    assert torch.load(previous, weights_only=True)["trainer"]["step"] == 5
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(GenflowError, match=r"last.pt is truncated or corrupted"):
        load_checkpoint(last)
    fresh = _trainer(Quadratic(), tmp_path)
    assert fresh.restore([last, previous]) == previous and fresh.state.step == 5
    # the bad file is moved aside, so the next last.pt does not rotate it over the good one
    [moved] = (tmp_path / "checkpoints").glob("last.pt.unreadable-*")
    assert not last.exists() and len(moved.read_bytes()) == 1000
    fresh.save("last.pt")
    assert torch.load(previous, weights_only=True)["trainer"]["step"] == 5


def test_stop_signal_on_a_checkpoint_step_keeps_the_earlier_checkpoint_as_fallback(tmp_path):
    class SignalsAt(Quadratic):
        calls = 0

        def forward(self, x):
            SignalsAt.calls += 1
            if SignalsAt.calls == 10:  # during step 10, a checkpoint step (ckpt_every=5)
                os.kill(os.getpid(), signal.SIGTERM)
            return super().forward(x)

    trainer = _trainer(SignalsAt(), tmp_path, max_steps=20)
    with pytest.raises(Preempted) as stop:
        trainer.fit(RunLogger(tmp_path, None, {}))
    assert stop.value.step == 10 and stop.value.exit_code == 128 + signal.SIGTERM
    ckpts = tmp_path / "checkpoints"
    assert torch.load(ckpts / "last.pt", weights_only=True)["trainer"]["step"] == 10
    assert torch.load(ckpts / "last.prev.pt", weights_only=True)["trainer"]["step"] == 5


def test_patience_stops_early_and_keeps_the_best(tmp_path):
    class Worsening(Quadratic):
        evaluations = 0

        def evaluate(self, x):  # validation gets worse at every evaluation
            Worsening.evaluations += 1
            value = torch.full((len(x),), float(Worsening.evaluations))
            return {"bpd": value, "nll": value}

    trainer = _trainer(Worsening(), tmp_path, max_steps=100, eval_every=2, patience=2)
    state = trainer.fit(RunLogger(tmp_path, None, {}))
    assert state.stopped_early and state.step == 6 and state.best_step == 2

    # trainer.monitor: the same rising values are improvements under mode=max, on nll
    Worsening.evaluations = 0
    monitor = {"metric": "nll", "mode": "max"}
    (tmp_path / "max").mkdir()
    trainer = _trainer(Worsening(), tmp_path / "max", max_steps=8, eval_every=2, monitor=monitor)
    state = trainer.fit(RunLogger(tmp_path / "max", None, {}))
    assert not state.stopped_early and state.best_step == 8 and state.best_metric == 4.0
    best = torch.load(tmp_path / "max" / "checkpoints" / "best.pt", weights_only=True)
    assert best["trainer"]["best_step"] == 8


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


def test_the_optimizer_steps_fused_where_torch_can_and_the_update_is_the_same():
    """optimizer.fused=auto takes torch's fused step for adam / adamw on the CPU (adamax has
    none); its steps follow the per-parameter loop's to float rounding; true where torch has no
    fused step, or a value that is not auto/true/false, is one sentence."""

    def options(name, fused="auto", weight_decay=0.01):
        return OmegaConf.create(
            dict(name=name, lr=1e-2, betas=[0.9, 0.99], weight_decay=weight_decay, fused=fused)
        )

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    assert build_optimizer(net(), options("adam")).defaults["fused"]
    assert build_optimizer(net(), options("adamw")).defaults["fused"]
    assert not build_optimizer(net(), options("adam", fused=False)).defaults["fused"]
    assert not build_optimizer(net(), options("adamax")).defaults.get("fused")
    before_the_option = dict(name="adam", lr=1e-2, betas=[0.9, 0.99], weight_decay=0.0)
    assert build_optimizer(net(), OmegaConf.create(before_the_option)).defaults["fused"]
    for name in ("adam", "adamw"):
        fused, loop = net(), net()
        steppers = [
            (fused, build_optimizer(fused, options(name))),
            (loop, build_optimizer(loop, options(name, fused=False))),
        ]
        x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
        for _ in range(20):
            for model, optimizer in steppers:
                optimizer.zero_grad()
                model(x).pow(2).mean().backward()
                optimizer.step()
        for a, b in zip(fused.parameters(), loop.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (fused[0].weight - net()[0].weight).abs().max() > 1e-2  # they moved
    with pytest.raises(
        GenflowError, match="torch has a fused step for adam, adamw on cpu and cuda"
    ):
        build_optimizer(net(), options("adamax", fused=True))
    with pytest.raises(GenflowError, match="optimizer.fused must be auto, true or false"):
        build_optimizer(net(), options("adam", fused="yes"))


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


def test_the_end_of_a_run_says_the_result_where_the_best_step_was_and_what_next(tmp_path):

    from genflow.engine.train_state import TrainState
    from genflow.tasks.train import result_lines

    summary = {"bpd": 1.23456, "nll": 60.5, "step": 400}
    state = TrainState(step=1000, best_metric=1.2, best_step=400)
    wandb = OmegaConf.create({"name": "wandb", "mode": "offline"})
    lines = result_lines(summary, state, 1.35, _tcfg(), tmp_path, wandb)
    assert lines[0].startswith("test bpd 1.2346, nll 60.50 nats (best checkpoint, step 400 of")
    assert "validation bpd was best at step 400 (1.2000) and 1.3500 at step 1000" in lines[1]
    assert lines[-1] == (
        f"next: genflow eval run={tmp_path}  |  genflow sample run={tmp_path}  |  "
        f"wandb sync {tmp_path}/wandb/offline-run-*"
    )
    # still improving at the end (or mode=max and rising): no warning, no W&B line
    quiet = result_lines(summary, state, 1.2, _tcfg(), tmp_path, OmegaConf.create({"name": "none"}))
    assert len(quiet) == 2 and "wandb" not in quiet[-1]
    rising = _tcfg(monitor={"metric": "nll", "mode": "max"})
    assert len(result_lines(summary, state, 1.35, rising, tmp_path, wandb)) == 2
    # a budget's stop one step after a validation: its last value is no sign of overfitting
    just_after = TrainState(step=401, best_metric=1.2, best_step=400)
    assert len(result_lines(summary, just_after, 1.21, _tcfg(eval_every=100), tmp_path, wandb)) == 2


def test_wandb_online_without_an_api_key_says_what_to_do(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    cfg = OmegaConf.create({"name": "wandb", "mode": "online", "project": "p"})
    with pytest.raises(
        GenflowError, match=r"W&B did not start in logger.mode=online .*wandb login"
    ):
        RunLogger(tmp_path, cfg, {})


class _NotATensor:
    """What a checkpoint from another tool may hold: a pickled Python object."""


def test_a_checkpoint_holding_python_objects_is_refused_as_such_not_as_corrupted(tmp_path):
    from genflow.engine.checkpoint import load_checkpoint

    path = tmp_path / "other.pt"
    torch.save({"model": {}, "extra": _NotATensor()}, path)
    with pytest.raises(GenflowError, match="holds Python objects .*_NotATensor.* arbitrary code"):
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(GenflowError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_earlier_one(tmp_path):
    """A file-size limit stands in for a full disk: the write fails with one sentence, the
    checkpoint already there (and its predecessor) stay loadable, no temporary file is left."""
    import resource

    from genflow.engine.checkpoint import load_checkpoint, previous_path, save_checkpoint

    def state(step):
        return {
            "model": {"w": torch.full((50_000,), float(step))},
            "trainer": {"step": step},
            "config": {"model": {"_target_": "genflow.models.realnvp.RealNVP"}},
        }

    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2), path, keep_previous=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size // 2, hard))
    try:
        with pytest.raises(
            GenflowError, match="could not write checkpoint .*last.pt .*disk may be full"
        ):
            save_checkpoint(state(3), path, keep_previous=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert load_checkpoint(path)["trainer"]["step"] == 2
    assert load_checkpoint(previous_path(path))["trainer"]["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.prev.pt", "last.pt"]


def test_a_full_disk_elsewhere_is_one_sentence():
    import errno

    from genflow.errors import storage_error

    err = OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")
    assert "No space left on device writing /runs/x/metrics.jsonl: the disk is full" in str(
        storage_error(err)
    )
    assert storage_error(OSError(errno.ENOENT, "No such file")) is None
