"""One plain, step-based training loop: validate, keep the best, checkpoint, sample."""

from __future__ import annotations

import copy
import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from genflow.data.batches import EpochBatches
from genflow.data.datasets import DataSplits
from genflow.engine.checkpoint import (
    last_checkpoints,
    load_first_good,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from genflow.engine.distributed import (
    DistContext,
    broadcast_module,
    max_parameter_difference,
    micro_batch_seed,
)
from genflow.engine.ema import build_ema, update_ema
from genflow.engine.evaluate import evaluate, seeded_rng
from genflow.engine.faults import first_nonfinite_output, nonfinite_gradients
from genflow.engine.pictures import save_density, save_samples
from genflow.engine.precision import autocast, grad_scaler
from genflow.engine.preemption import Preempted, PreemptionGuard
from genflow.engine.run_logger import RunLogger
from genflow.errors import GenflowError
from genflow.models.base import GenerativeModel

log = logging.getLogger(__name__)

SELECTION_METRIC = "bpd"


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must carry besides the modules."""

    step: int = 0
    best_metric: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    wandb_id: str | None = None
    skipped_steps: int = 0  # non-finite steps skipped in total
    bad_in_a_row: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0  # product of the learning-rate cuts made by rollbacks
    train_seconds: float = 0.0  # wall time in the training loop, over every resumed part


class Trainer:
    """Trains ``model`` on ``splits`` and writes into ``run_dir``.

    ``checkpoints/last.pt`` holds the newest full state and ``checkpoints/best.pt`` the state
    with the lowest validation bpd; ``samples/`` holds sample grids; ``metrics.jsonl`` one
    JSON object per logged event.

    Under DDP (``ctx``) every rank runs this loop on its own micro-batches: rank r of W takes
    global micro-batches (s * W + r) * n + i of step s, i < n = trainer.accumulate_steps, so W
    ranks see exactly what one process accumulating W * n micro-batches would. Rank 0 alone
    writes (metrics, samples, checkpoints); decisions (skip a step, stop, roll back, keep
    the best) come from all-reduced values, so every rank takes them together.
    """

    def __init__(
        self,
        cfg,
        model: GenerativeModel,
        optimizer: torch.optim.Optimizer,
        scheduler,
        splits: DataSplits,
        run_dir: Path,
        config: dict[str, Any],
        ctx: DistContext | None = None,
    ):
        self.cfg = cfg
        self.ctx = ctx or DistContext()
        self.seed = int(cfg.seed)
        self.tcfg = cfg.trainer
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.splits = splits
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config = config
        self.state = TrainState()
        self.batches = EpochBatches(
            splits.train, int(self.tcfg.batch_size), self.seed, transform=splits.train_transform
        )
        self.logger: RunLogger | None = None
        self.ema = build_ema(model, self.tcfg.get("ema"))
        self.precision = str(self.tcfg.get("precision") or "fp32")
        self.scaler = grad_scaler(self.precision, splits.train.device)
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.train_forward: torch.nn.Module = model  # set by _wrap: DDP and compile
        self.accumulate_steps = int(self.tcfg.get("accumulate_steps") or 1)
        # trainer.channels_last: image batches and 4-D weights in NHWC (the checkpoints
        # still load into a plain model: load_state_dict copies across layouts)
        self.channels_last = bool(self.tcfg.get("channels_last")) and splits.train.dim() == 4
        faults = self.tcfg.get("fault_injection") or {}
        self._nan_steps = {int(s) for s in (faults.get("nan_loss_at_steps") or [])}
        self._injected: set[int] = set()
        # a copy of the state this fit started from, kept in memory until the first last.pt
        # is written, so a run that goes non-finite before then still has a state to roll
        # back to (fit sets it, save drops it)
        self._start_state: dict[str, Any] | None = None

    @property
    def eval_model(self) -> GenerativeModel:
        """What validation and sampling use: the EMA of the weights when trainer.ema is set."""
        if self.ema is None:
            return self.model
        if int(self.ema.n_averaged) == 0:  # no step averaged yet: the average is the model
            update_ema(self.ema, self.model)
        return self.ema.module

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "trainer": asdict(self.state),
            "rng": rng_state(),
            "config": self.config,
        }

    def save(self, name: str) -> Path:
        """Rank 0 writes; every rank gets the path."""
        path = self.ckpt_dir / name
        if self.ctx.is_main:
            save_checkpoint(self.state_dict(), path, keep_previous=name == "last.pt")
        if name == "last.pt":
            self._start_state = None  # rollbacks now go to the checkpoint on disk
        return path

    def restore(self, candidates: Path | list[Path]) -> Path:
        """Load the first readable checkpoint of ``candidates``; return its path."""
        candidates = [candidates] if isinstance(candidates, Path) else list(candidates)
        ckpt, path = load_first_good(candidates)
        self.load_state(ckpt, path)
        return path

    def load_state(self, ckpt: dict[str, Any], path: Path | str) -> None:
        """Put the modules, the trainer state and the RNG back as ``ckpt`` holds them;
        ``path`` names where it came from in messages."""
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise GenflowError(
                f"checkpoint {path} does not fit this model config (was the model changed "
                f"since the run started?): {str(err).splitlines()[0]}"
            ) from err
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            else:  # trainer.ema added on resume: the average starts from these weights
                self.ema.n_averaged.zero_()
        self.state = TrainState(**ckpt["trainer"])
        set_rng_state(ckpt["rng"])
        if self.ctx.is_main:
            self._drop_records_after(self.state.step)
        log.info("resumed from %s at step %d", path, self.state.step)

    def _drop_records_after(self, step: int) -> None:
        """Steps after the checkpoint will be run again: drop their stale records."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))

    # -- the loop ------------------------------------------------------------------------
    def fit(self, logger: RunLogger) -> TrainState:
        self.logger = logger
        self.state.wandb_id = logger.run_id
        tc = self.tcfg
        max_steps = int(tc.max_steps)
        grad_clip = float(tc.grad_clip) if tc.grad_clip else math.inf
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = tqdm(
            total=max_steps,
            initial=self.state.step,
            desc="train",
            disable=not tc.progress_bar or not self.ctx.is_main,
            dynamic_ncols=True,
        )
        self._wrap()
        self.model.train()
        if self.ctx.is_main:
            remove_stale_temporaries(self.ckpt_dir)
        if not last_checkpoints(self.ckpt_dir):
            # after _wrap: under DDP every rank holds rank 0's initialised weights
            self._start_state = copy.deepcopy(self.state_dict())
        try:
            with logging_redirect_tqdm(), PreemptionGuard() as guard:
                self._loop(bar, max_steps, grad_clip, params, guard)
        finally:
            bar.close()
        self.ctx.barrier()  # rank 0's last checkpoints are on disk for every rank to read
        return self.state

    def _wrap(self) -> None:
        """The training forward: DDP around the model when distributed (after rank 0's
        parameters and buffers, data-dependent initialisation included, reached every rank),
        then torch.compile when trainer.compile. Checkpoints, validation and sampling use the
        plain module, so checkpoints load without DDP or compile."""
        module: torch.nn.Module = self.model
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.ctx.enabled and self.ddp is None:
            broadcast_module(self.model, self.ctx)
            device = self.splits.train.device
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if self.ddp is not None:
            module = self.ddp
        self.train_forward = torch.compile(module) if self.tcfg.get("compile") else module

    def _out_of_time(self) -> bool:
        """trainer.max_minutes: the wall-clock budget of the training loop (validation and
        checkpoints included), counted over every resumed part of the run."""
        budget = self.tcfg.get("max_minutes")
        return budget is not None and self.state.train_seconds >= 60.0 * float(budget)

    def _loop(self, bar, max_steps: int, grad_clip: float, params, guard: PreemptionGuard) -> None:
        tc, logger = self.tcfg, self.logger
        window_start, window_steps = time.perf_counter(), 0
        loop_start, seconds_before = time.perf_counter(), self.state.train_seconds
        if self._out_of_time():
            log.info("the time budget (trainer.max_minutes) was spent before this resume")
            return
        while self.state.step < max_steps and not self.state.stopped_early:
            x, metrics, loss = self._forward_backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            # what decides the step, read in one host sync per step (one all-reduce on top
            # under DDP, so every rank skips or stops together)
            self.state.train_seconds = seconds_before + time.perf_counter() - loop_start
            flags = torch.cat(
                [
                    (~torch.isfinite(loss)).float().reshape(1),
                    (~torch.isfinite(grad_norm)).float().reshape(1),
                    torch.tensor(
                        [float(guard.requested), float(self._out_of_time())],
                        device=grad_norm.device,
                    ),
                ]
            )
            bad_loss, bad_grad, stops, out_of_time = self.ctx.all_reduce(flags).tolist()
            preempted = stops > 0
            # with fp16 loss scaling, non-finite gradients from a finite loss are an overflow
            # at this scale: the scaler skips the update and lowers the scale; not a bad step
            overflow = bad_loss == 0 and bad_grad > 0 and self.scaler.is_enabled()
            finite = bad_loss == 0 and (bad_grad == 0 or overflow)
            if finite:
                self.scaler.step(self.optimizer)  # skips the update itself on overflow
                self.scaler.update()
                if self.ema is not None and not overflow:
                    update_ema(self.ema, self.model)
                self.state.bad_in_a_row = 0
            self.scheduler.step()
            self.state.step += 1
            step = self.state.step
            window_steps += 1
            bar.update(1)
            if not finite and self._on_bad_step(x, metrics, loss, step):
                bar.n = self.state.step  # rolled back to an earlier step
                bar.refresh()
                window_start, window_steps = time.perf_counter(), 0
                continue

            # the last step: the step budget, or the time budget reached on every rank alike
            last = step == max_steps or out_of_time > 0
            if step % int(tc.log_every) == 0 or last:
                elapsed = time.perf_counter() - window_start
                metrics = {
                    **self._global_means({"loss": loss, **metrics}),
                    "grad_norm": grad_norm,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "steps_per_sec": window_steps / max(elapsed, 1e-9),
                }
                logger.log(step, "train", metrics)
                bar.set_postfix(loss=f"{loss.item():.4f}", bpd=f"{metrics['bpd'].item():.3f}")
                window_start, window_steps = time.perf_counter(), 0
            if step % int(tc.eval_every) == 0 or last:
                self._validate(step)
            if tc.sample_every and (step % int(tc.sample_every) == 0 or last):
                if self.ctx.is_main:
                    self.write_samples(step)
                self.ctx.barrier()
            checkpoint_due = step % int(tc.ckpt_every) == 0 or last
            if checkpoint_due or self.state.stopped_early or preempted:
                # one write per step: a second would rotate this step's last.pt into
                # last.prev.pt and lose the earlier checkpoint kept as the fallback
                path = self.save("last.pt")
            if preempted:
                self.ctx.barrier()
                # a rank the signal did not reach stops as if it had had SIGTERM
                raise Preempted(guard.signum or signal.SIGTERM, step, str(path))
            if out_of_time > 0 and step < max_steps:
                log.info(
                    "trainer.max_minutes=%g reached at step %d; resume with a larger budget "
                    "to go on",
                    float(tc.max_minutes),
                    step,
                )
                break

    def _forward_backward(self) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Gradients of one optimizer step, summed over ``trainer.accumulate_steps``
        micro-batches of ``trainer.batch_size`` (global micro-batch j = (s * W + r) * n + i
        of step s on rank r of W, so the data stay a pure function of (seed, step)). Returns
        the last micro-batch and the micro-batch means of the loss and metrics. A non-finite
        loss still goes through backward (its gradients go non-finite, which the step's
        flags catch): no host sync here, and DDP ranks never wait on a rank that skipped."""
        n, step = self.accumulate_steps, self.state.step
        ctx = self.ctx
        self.model.set_training_step(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.splits.train.device)
        metrics: dict[str, torch.Tensor] = {}
        for i in range(n):
            index = (step * ctx.world_size + ctx.rank) * n + i  # the global micro-batch
            torch.manual_seed(micro_batch_seed(self.seed, index))
            x = self.batches(index)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # DDP all-reduces the gradients in the last micro-batch's backward only
            last = i == n - 1
            with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                with autocast(self.precision, x.device):
                    out = self.train_forward(x)
                micro = out.loss.float()
                if i == 0:
                    micro = self._inject_faults(micro, step + 1)
                self.scaler.scale(micro / n).backward()  # x / 1 is exact: n = 1 is plain
            loss = loss + micro.detach() / n
            for name, value in out.metrics.items():
                metrics[name] = metrics.get(name, 0.0) + value / n
        return x, metrics, loss

    def _global_means(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Means over every rank's examples: sums and counts are all-reduced (each rank's
        value is the mean over its batch_size * accumulate_steps examples)."""
        if not self.ctx.enabled:
            return metrics
        count = float(self.batches.batch_size * self.accumulate_steps)
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in metrics.values()])
        totals = self.ctx.all_reduce(
            torch.cat([values * count, values.new_tensor([count])]).to(self.splits.train.device)
        )
        means = (totals[:-1] / totals[-1]).cpu()
        return dict(zip(metrics, means, strict=True))

    # -- faults --------------------------------------------------------------------------
    def _inject_faults(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """trainer.fault_injection.nan_loss_at_steps: a NaN loss, once per listed step."""
        if step in self._nan_steps and step not in self._injected:
            self._injected.add(step)
            log.warning("fault injection: NaN loss at step %d", step)
            return loss * math.nan
        return loss

    def _on_bad_step(self, x: torch.Tensor, metrics: dict, loss: torch.Tensor, step: int) -> bool:
        """Skip a non-finite step; after ``max_bad_steps`` in a row roll back or stop.

        Returns True when the run was rolled back to the last checkpoint.
        """
        tc, state = self.tcfg, self.state
        state.skipped_steps += 1
        state.bad_in_a_row += 1
        terms = {k: v.item() for k, v in metrics.items()}
        self.logger.log(
            step,
            "train",
            {
                "skipped_step": 1,
                "loss": loss.item(),
                **terms,
                "bad_in_a_row": state.bad_in_a_row,
                "skipped_steps": state.skipped_steps,
            },
        )
        described = ", ".join(f"{k}={v:.4g}" for k, v in {"loss": loss.item(), **terms}.items())
        log.warning(
            "step %d: non-finite loss or gradient (%s); step skipped (%d in a row)",
            step,
            described,
            state.bad_in_a_row,
        )
        if state.bad_in_a_row < int(tc.max_bad_steps):
            return False
        cause = self._diagnose(x, loss)
        checkpoints = last_checkpoints(self.ckpt_dir)
        can_roll_back = tc.on_bad_steps == "rollback" and state.rollbacks < int(tc.max_rollbacks)
        if can_roll_back and (checkpoints or self._start_state is not None):
            self._roll_back(step, cause, checkpoints)
            return True
        why = (
            f"after {state.rollbacks} rollbacks"
            if tc.on_bad_steps == "rollback"
            else "trainer.on_bad_steps=stop"
        )
        raise GenflowError(
            f"training stopped at step {step}: {state.bad_in_a_row} non-finite steps in a row "
            f"({why}); loss terms: {described}; {cause}. Try a lower optimizer.lr or a tighter "
            "trainer.grad_clip, then resume=auto"
        )

    def _diagnose(self, x: torch.Tensor, loss: torch.Tensor) -> str:
        bad_gradients = nonfinite_gradients(self.model)
        layer = first_nonfinite_output(self.model, x)
        if layer is not None:
            return f"the first non-finite output came from layer '{layer}'"
        if bad_gradients and bool(torch.isfinite(loss)):
            return f"every layer output was finite; the first non-finite gradient is of '{bad_gradients[0]}'"
        return "every layer output was finite, so the loss itself went non-finite (or a fault was injected)"

    def _roll_back(self, step: int, cause: str, checkpoints: list[Path]) -> None:
        self.ctx.barrier()
        factor = float(self.tcfg.rollback_lr_factor)
        carried = (self.state.skipped_steps, self.state.rollbacks + 1, self.state.lr_scale * factor)
        if checkpoints:
            self.restore(checkpoints)
        else:  # before the first checkpoint: the state this fit started from
            self.load_state(copy.deepcopy(self._start_state), "the state kept in memory")
        # the restored scheduler carries the cuts made before its state was saved: cut
        # by what is missing, so the rate is lr_scale x the configured one whichever
        # state (a checkpoint from before an earlier rollback, or the start) came back
        missing = carried[2] / self.state.lr_scale
        self.state.skipped_steps, self.state.rollbacks, self.state.lr_scale = carried
        self.state.bad_in_a_row = 0  # the checkpoint may have been written mid-streak
        self.scheduler.base_lrs = [lr * missing for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= missing
        log.warning(
            "rolled back from step %d to step %d (%s); learning rate now x%g of the configured one",
            step,
            self.state.step,
            cause,
            self.state.lr_scale,
        )
        self.logger.log(
            self.state.step,
            "train",
            {"rollback": self.state.rollbacks, "from_step": step, "lr_scale": self.state.lr_scale},
        )

    def _validate(self, step: int) -> None:
        metrics = evaluate(
            self.eval_model, self.splits.val, int(self.tcfg.eval_batch_size), ctx=self.ctx
        )
        if self.ctx.enabled:  # 0.0 while the replicas are in step; logged so it can be seen
            metrics["ddp_max_param_diff"] = max_parameter_difference(self.model, self.ctx)
            if metrics["ddp_max_param_diff"] != 0.0:
                log.warning(
                    "step %d: DDP replicas differ by up to %.3g in a parameter",
                    step,
                    metrics["ddp_max_param_diff"],
                )
        self.logger.log(step, "val", metrics)
        value = metrics[SELECTION_METRIC]
        improved = value < self.state.best_metric
        if improved:
            self.state.best_metric, self.state.best_step = value, step
            self.state.evals_since_best = 0
        else:
            self.state.evals_since_best += 1
        patience = self.tcfg.get("patience")
        if patience and self.state.evals_since_best >= int(patience):
            self.state.stopped_early = True
            log.info(
                "early stop at step %d: no better validation %s for %d evaluations (best %.4f at step %d)",
                step,
                SELECTION_METRIC,
                patience,
                self.state.best_metric,
                self.state.best_step,
            )
        if improved:
            self.save("best.pt")
        log.info(
            "step %d: val %s %.4f (best %.4f at step %d)",
            step,
            SELECTION_METRIC,
            value,
            self.state.best_metric,
            self.state.best_step,
        )

    def write_samples(self, step: int) -> Path:
        model = self.eval_model
        was_training = model.training
        model.eval()
        with seeded_rng(self.seed, self.splits.train.device):
            samples = model.sample(int(self.tcfg.sample_n))
            pictures = model.pictures(self.splits.val[: int(self.tcfg.sample_n)])
        model.train(was_training)
        two_d = self.splits.val.dim() == 2
        path = save_samples(
            samples,
            self.run_dir / "samples" / f"step_{step:07d}.png",
            self.model.levels,
            self.splits.val if two_d else None,
        )
        self.logger.log_image(step, "samples", path)
        for name, (images, nrow) in pictures.items():
            picture = save_samples(
                images,
                self.run_dir / "samples" / f"{name}_{step:07d}.png",
                self.model.levels,
                nrow=nrow,
            )
            self.logger.log_image(step, name, picture)
        if two_d:
            density = save_density(
                model, self.splits.val, self.run_dir / "samples" / f"density_{step:07d}.png"
            )
            self.logger.log_image(step, "density", density)
        return path
