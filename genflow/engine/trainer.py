"""One plain, step-based training loop: validate, keep the best, checkpoint, sample.

The settings come typed (engine/trainer_config.py), what to do about a non-finite step from
the fault policy (engine/faults.py), the pictures from engine/pictures.py and the records go
through the RunLogger, which owns metrics.jsonl.
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from genflow.data.batches import EpochBatches
from genflow.data.datasets import DataSplits
from genflow.data.stream import StreamBatches, StreamSplit, rank_order
from genflow.engine.checkpoint import remove_stale_temporaries
from genflow.engine.distributed import (
    DistContext,
    broadcast_module,
    max_parameter_difference,
    micro_batch_seed,
)
from genflow.engine.ema import build_ema, update_ema
from genflow.engine.evaluate import evaluate
from genflow.engine.faults import ROLL_BACK, SKIP, FaultPolicy, diagnose
from genflow.engine.pictures import write_step_pictures
from genflow.engine.precision import autocast, grad_scaler
from genflow.engine.preemption import Preempted, PreemptionGuard
from genflow.engine.run_dir import BEST, LAST, RunDir
from genflow.engine.run_logger import RunLogger
from genflow.engine.train_state import TrainingCheckpoints, TrainState
from genflow.engine.trainer_config import TrainerConfig
from genflow.errors import GenflowError
from genflow.models.base import GenerativeModel

log = logging.getLogger(__name__)


class Trainer(TrainingCheckpoints):
    """Trains ``model`` on ``splits`` and writes into ``run_dir``.

    ``checkpoints/last.pt`` holds the newest full state and ``checkpoints/best.pt`` the state
    with the best validation value of ``trainer.monitor``; ``samples/`` holds sample grids; ``metrics.jsonl`` one
    JSON object per logged event.

    Under DDP (``ctx``) every rank runs this loop on its own micro-batches: rank r of W takes
    global micro-batches (s * W + r) * n + i of step s, i < n = trainer.accumulate_steps, so W
    ranks see exactly what one process accumulating W * n micro-batches would. Rank 0 alone
    writes (metrics, samples, checkpoints); decisions (skip a step, stop, roll back, keep
    the best) come from all-reduced values, so every rank takes them together.
    """

    def __init__(
        self,
        tcfg: TrainerConfig,
        seed: int,
        model: GenerativeModel,
        optimizer: torch.optim.Optimizer,
        scheduler,
        splits: DataSplits,
        run_dir: Path,
        config: dict[str, Any],
        ctx: DistContext | None = None,
    ):
        self.ctx = ctx or DistContext()
        self.seed = int(seed)
        self.tcfg = tcfg
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.splits = splits
        self.run_dir = RunDir(run_dir)
        self.config = config
        self.batches = self._batches(splits)
        self.logger: RunLogger | None = None
        self.ema = build_ema(model, tcfg.ema)
        self.scaler = grad_scaler(tcfg.precision, splits.train.device)
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self.train_forward: torch.nn.Module = model  # set by _wrap: DDP and compile
        # trainer.channels_last: image batches and 4-D weights in NHWC (the checkpoints
        # still load into a plain model: load_state_dict copies across layouts)
        self.channels_last = tcfg.channels_last and splits.train.dim() == 4
        self.faults = FaultPolicy(
            tcfg.max_bad_steps,
            tcfg.on_bad_steps,
            tcfg.max_rollbacks,
            tcfg.rollback_lr_factor,
            tcfg.nan_loss_at_steps,
        )
        self.state = TrainState()
        self.last_value: float | None = None  # the latest validation value of the monitor
        self._start_state: dict[str, Any] | None = None  # see TrainingCheckpoints

    def _batches(self, splits: DataSplits) -> EpochBatches | StreamBatches:
        """The training batches by global micro-batch index: from the tensor in memory, or
        read from disk by worker processes (a streamed dataset), along this rank's indices."""
        if not isinstance(splits.train, StreamSplit):
            return EpochBatches(
                splits.train,
                self.tcfg.batch_size,
                self.seed,
                transform=splits.train_transform,
                labels=self.labels_of("train"),
            )
        return StreamBatches(
            splits.train,
            self.tcfg.batch_size,
            self.seed,
            rank_order(self.tcfg.accumulate_steps, self.ctx.world_size),
            labels=self.labels_of("train"),
        )

    def labels_of(self, split: str) -> torch.Tensor | None:
        """What a conditional model is given with a split's examples (it trains and is scored
        on p(x | y)): class labels (model.num_classes) or context vectors (a dataset's
        context); None for an unconditional model."""
        return self.splits.conditions(split, self.model.conditioned_on)

    @property
    def eval_model(self) -> GenerativeModel:
        """What validation and sampling use: the EMA of the weights when trainer.ema is set."""
        if self.ema is None:
            return self.model
        if int(self.ema.n_averaged) == 0:  # no step averaged yet: the average is the model
            update_ema(self.ema, self.model)
        return self.ema.module

    # -- the loop ------------------------------------------------------------------------
    def fit(self, logger: RunLogger) -> TrainState:
        self.logger = logger
        self.state.wandb_id = logger.run_id
        if self.state.step > 0:  # resumed: the steps after the checkpoint are run again
            logger.drop_records_after(self.state.step)
        tc = self.tcfg
        max_steps, grad_clip = tc.max_steps, tc.grad_clip
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
            remove_stale_temporaries(self.run_dir.checkpoints)
        if not self.run_dir.last_checkpoints():
            # after _wrap: under DDP every rank holds rank 0's initialised weights
            self._start_state = copy.deepcopy(self.state_dict())
        try:
            with logging_redirect_tqdm(), PreemptionGuard() as guard:
                self._loop(bar, max_steps, grad_clip, params, guard)
        finally:
            bar.close()
            self.batches.close()  # a streamed dataset's workers, before the test
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
        self.train_forward = torch.compile(module) if self.tcfg.compile else module

    def _out_of_time(self) -> bool:
        """trainer.max_minutes: the wall-clock budget of the training loop (validation and
        checkpoints included), counted over every resumed part of the run."""
        budget = self.tcfg.max_minutes
        return budget is not None and self.state.train_seconds >= 60.0 * budget

    def _loop(self, bar, max_steps: int, grad_clip: float, params, guard: PreemptionGuard) -> None:
        tc, logger = self.tcfg, self.logger
        window_start, window_steps = time.perf_counter(), 0
        loop_start, seconds_before = time.perf_counter(), self.state.train_seconds
        first_step = True  # holds the start-up (compile, allocator warm-up): not in steps/s
        if self._out_of_time():
            log.info("the time budget (trainer.max_minutes) was spent before this resume")
            return
        while self.state.step < max_steps and not self.state.stopped_early:
            batch, metrics, loss = self._forward_backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            # what decides the step, read in one host sync per step (one all-reduce on top
            # under DDP, so every rank skips or stops together); the loss and bpd for the
            # progress bar ride along, summed over ranks
            self.state.train_seconds = seconds_before + time.perf_counter() - loop_start
            shown = metrics.get("bpd", loss)
            flags = torch.cat(
                [
                    (~torch.isfinite(loss)).float().reshape(1),
                    (~torch.isfinite(grad_norm)).float().reshape(1),
                    torch.tensor(
                        [float(guard.requested), float(self._out_of_time())],
                        device=grad_norm.device,
                    ),
                    loss.detach().float().reshape(1),
                    torch.as_tensor(shown, device=grad_norm.device).detach().float().reshape(1),
                    (grad_norm > tc.grad_skip).float().reshape(1),
                    # records a streamed dataset could not read in this step's micro-batches
                    torch.tensor([float(self.batches.take_skipped())], device=grad_norm.device),
                ]
            )
            reduced = self.ctx.all_reduce(flags).tolist()
            bad_loss, bad_grad, stops, out_of_time = reduced[:4]
            too_large = reduced[6] > 0  # the same all-reduced norm on every rank
            self.state.skipped_records += int(reduced[7])  # unreadable records, all ranks
            world = self.ctx.world_size
            postfix = {"loss": f"{reduced[4] / world:.4f}"}
            if "bpd" in metrics:
                postfix["bpd"] = f"{reduced[5] / world:.3f}"
            preempted = stops > 0
            # with fp16 loss scaling, non-finite gradients from a finite loss are an overflow
            # at this scale: the scaler skips the update and lowers the scale; not a bad step
            overflow = bad_loss == 0 and bad_grad > 0 and self.scaler.is_enabled()
            finite = bad_loss == 0 and (bad_grad == 0 or overflow)
            if finite and too_large and not overflow:  # skipped for its size: not a fault
                self.scaler.update()  # closes the step's unscale_ (fp16); no update is made
                self.state.grad_skipped_steps += 1
                self.state.bad_in_a_row = 0
            elif finite:
                self.scaler.step(self.optimizer)  # skips the update itself on overflow
                self.scaler.update()
                if self.ema is not None and not overflow:
                    update_ema(self.ema, self.model)
                self.state.bad_in_a_row = 0
            else:  # fp16: close the step's unscale_ (lowering the scale), or the next fails
                self.scaler.update()
            self.scheduler.step()
            self.state.step += 1
            step = self.state.step
            window_steps += 1
            bar.set_postfix(postfix, refresh=False)  # shown by update's own refresh
            bar.update(1)
            if first_step:
                first_step = False
                if step % tc.log_every and step != max_steps:
                    window_start, window_steps = time.perf_counter(), 0
            if not finite and self._on_bad_step(batch, metrics, loss, step):
                bar.n = self.state.step  # rolled back to an earlier step
                bar.refresh()
                window_start, window_steps = time.perf_counter(), 0
                continue

            # the last step: the step budget, or the time budget reached on every rank alike
            last = step == max_steps or out_of_time > 0
            if step % tc.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                metrics = {
                    **self._global_means({"loss": loss, **metrics}),
                    "grad_norm": grad_norm,
                    **(
                        {"grad_skipped_steps": self.state.grad_skipped_steps}
                        if tc.grad_skip != math.inf
                        else {}
                    ),
                    **(
                        {"skipped_records": self.state.skipped_records}
                        if self.state.skipped_records
                        else {}
                    ),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "steps_per_sec": window_steps / max(elapsed, 1e-9),
                }
                logger.log(step, "train", metrics)
                window_start, window_steps = time.perf_counter(), 0
            if step % tc.eval_every == 0 or last:
                self._validate(step)
            if tc.sample_every and (step % tc.sample_every == 0 or last):
                if self.ctx.is_main:
                    self.write_samples(step)
                self.ctx.barrier()
            checkpoint_due = step % tc.ckpt_every == 0 or last
            if checkpoint_due or self.state.stopped_early or preempted:
                # one write per step: a second would rotate this step's last.pt into
                # last.prev.pt and lose the earlier checkpoint kept as the fallback
                path = self.save(LAST)
            if preempted:
                self.ctx.barrier()
                # a rank the signal did not reach stops as if it had had SIGTERM
                raise Preempted(guard.signum or signal.SIGTERM, step, str(path))
            if out_of_time > 0 and step < max_steps:
                log.info(
                    "trainer.max_minutes=%g reached at step %d; resume with a larger budget "
                    "to go on",
                    tc.max_minutes,
                    step,
                )
                break

    def _forward_backward(self) -> tuple[tuple, dict, torch.Tensor]:
        """Gradients of one optimizer step, summed over ``trainer.accumulate_steps``
        micro-batches of ``trainer.batch_size`` (global micro-batch j = (s * W + r) * n + i
        of step s on rank r of W, so the data stay a pure function of (seed, step)). Returns
        the last micro-batch (images, labels or None) and the micro-batch means of the loss and metrics. A non-finite
        loss still goes through backward (its gradients go non-finite, which the step's
        flags catch): no host sync here, and DDP ranks never wait on a rank that skipped."""
        n, step = self.tcfg.accumulate_steps, self.state.step
        ctx = self.ctx
        self.model.set_training_step(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.splits.train.device)
        metrics: dict[str, torch.Tensor] = {}
        for i in range(n):
            index = (step * ctx.world_size + ctx.rank) * n + i  # the global micro-batch
            torch.manual_seed(micro_batch_seed(self.seed, index))
            x, y = self.batches.labeled(index)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # DDP all-reduces the gradients in the last micro-batch's backward only
            last = i == n - 1
            with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                with autocast(self.tcfg.precision, x.device):
                    out = self.train_forward(x) if y is None else self.train_forward(x, y)
                micro = out.loss.float()
                if i == 0:
                    micro = self.faults.inject(micro, step + 1)
                self.scaler.scale(micro / n).backward()  # x / 1 is exact: n = 1 is plain
            loss = loss + micro.detach() / n
            for name, value in out.metrics.items():
                metrics[name] = metrics.get(name, 0.0) + value / n
        return (x, y), metrics, loss

    def _global_means(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Means over every rank's examples: sums and counts are all-reduced (each rank's
        value is the mean over its batch_size * accumulate_steps examples)."""
        if not self.ctx.enabled:
            return metrics
        count = float(self.batches.batch_size * self.tcfg.accumulate_steps)
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in metrics.values()])
        totals = self.ctx.all_reduce(
            torch.cat([values * count, values.new_tensor([count])]).to(self.splits.train.device)
        )
        means = (totals[:-1] / totals[-1]).cpu()
        return dict(zip(metrics, means, strict=True))

    # -- faults --------------------------------------------------------------------------
    def _on_bad_step(self, batch: tuple, metrics: dict, loss: torch.Tensor, step: int) -> bool:
        """Count and log a non-finite step, then do what the fault policy says: skip it,
        roll back (returns True) or stop with a message naming the step, terms and layer."""
        state = self.state
        state.skipped_steps += 1
        state.bad_in_a_row += 1
        terms = {"loss": loss.item(), **{k: v.item() for k, v in metrics.items()}}
        counts = {"bad_in_a_row": state.bad_in_a_row, "skipped_steps": state.skipped_steps}
        self.logger.log(step, "train", {"skipped_step": 1, **terms, **counts})
        described = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        log.warning(
            "step %d: non-finite loss or gradient (%s); step skipped (%d in a row)",
            step,
            described,
            state.bad_in_a_row,
        )
        checkpoints = self.run_dir.last_checkpoints()
        can_restore = bool(checkpoints) or self._start_state is not None
        action = self.faults.decide(state.bad_in_a_row, state.rollbacks, can_restore)
        if action == SKIP:
            return False
        cause = diagnose(self.model, batch[0], loss, batch[1])
        if action == ROLL_BACK:
            self._roll_back(step, cause, checkpoints)
            return True
        raise GenflowError(
            f"training stopped at step {step}: {state.bad_in_a_row} non-finite steps in a row "
            f"({self.faults.stop_reason(state.rollbacks)}); loss terms: {described}; {cause}. "
            "Try a lower optimizer.lr or a tighter trainer.grad_clip, then resume=auto"
        )

    def _roll_back(self, step: int, cause: str, checkpoints: list[Path]) -> None:
        self.ctx.barrier()
        self.roll_back_to(checkpoints, self.faults.rollback_lr_factor)
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
            self.eval_model,
            self.splits.val,
            self.tcfg.eval_batch_size,
            ctx=self.ctx,
            labels=self.labels_of("val"),
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
        monitor, state = self.tcfg.monitor, self.state
        if monitor.metric not in metrics:
            raise GenflowError(
                f"trainer.monitor.metric={monitor.metric} is not a validation metric of "
                f"{type(self.model).__name__}; valid: {', '.join(sorted(metrics))}"
            )
        value = self.last_value = metrics[monitor.metric]
        improved = state.best_step < 0 or monitor.better(value, state.best_metric)
        if improved:
            state.best_metric, state.best_step, state.evals_since_best = value, step, 0
        else:
            state.evals_since_best += 1
        patience = self.tcfg.patience
        if patience and state.evals_since_best >= patience:
            state.stopped_early = True
            log.info(
                "early stop at step %d: no better validation %s for %d evaluations (best %.4f at step %d)",
                step,
                monitor.metric,
                patience,
                state.best_metric,
                state.best_step,
            )
        if improved:
            self.save(BEST)
        log.info(
            "step %d: val %s %.4f (best %.4f at step %d)%s",
            step,
            monitor.metric,
            value,
            state.best_metric,
            state.best_step,
            f", {metrics['nfe']:.0f} NFE" if "nfe" in metrics else "",
        )

    def write_samples(self, step: int) -> Path:
        return write_step_pictures(
            self.eval_model,
            self.splits.val,
            self.run_dir,
            step,
            self.tcfg.sample_n,
            self.seed,
            self.logger,
            val_labels=self.splits.labels_of("val"),
            val_context=self.splits.conditions("val", "context"),
        )
