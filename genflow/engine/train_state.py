"""What a checkpoint carries and how a run goes back to one: the progress counters
(``TrainState``) and the save / restore / roll-back half of the Trainer."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genflow.engine.checkpoint import load_first_good, rng_state, save_checkpoint, set_rng_state
from genflow.engine.run_dir import LAST
from genflow.errors import GenflowError

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must carry besides the modules."""

    step: int = 0
    best_metric: float = math.inf  # of trainer.monitor.metric; meaningful once best_step >= 0
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    wandb_id: str | None = None
    skipped_steps: int = 0  # non-finite steps skipped in total
    grad_skipped_steps: int = 0  # steps whose gradient norm was over trainer.grad_skip
    skipped_records: int = 0  # unreadable records a streamed dataset left out of batches
    bad_in_a_row: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0  # product of the learning-rate cuts made by rollbacks
    train_seconds: float = 0.0  # wall time in the training loop, over every resumed part


def load_weights(
    model,
    weights: dict[str, Any],
    path: Path | str,
    misfit: str = "does not fit this model config (was the model changed since the run started?)",
) -> None:
    """A checkpoint's ``weights`` into ``model``, or one sentence (``misfit``) if they do not
    fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise GenflowError(f"checkpoint {path} {misfit}: {str(err).splitlines()[0]}") from err


class TrainingCheckpoints:
    """The checkpoint half of the Trainer, which holds ``model``, ``optimizer``,
    ``scheduler``, ``scaler``, ``ema``, ``state`` (a TrainState), ``config``, ``run_dir`` (a RunDir),
    ``ctx`` and ``logger``.

    ``_start_state`` is a copy of the state a fit started from, kept in memory until the
    first last.pt is written, so a run that goes non-finite before then still has a state
    to roll back to (fit sets it, saving last.pt drops it).
    """

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
        path = self.run_dir.checkpoint(name)
        if self.ctx.is_main:
            save_checkpoint(self.state_dict(), path, keep_previous=name == LAST)
        if name == LAST:
            self._start_state = None  # rollbacks now go to the checkpoint on disk
        return path

    def restore(self, candidates: Path | list[Path]) -> Path:
        """Load the first readable checkpoint of ``candidates``; return its path."""
        candidates = [candidates] if isinstance(candidates, Path) else list(candidates)
        ckpt, path = load_first_good(candidates, quarantine_bad=self.ctx.is_main)
        self.load_state(ckpt, path)
        return path

    def load_state(self, ckpt: dict[str, Any], path: Path | str) -> None:
        """Put the modules, the trainer state and the RNG back as ``ckpt`` holds them;
        ``path`` names where it came from in messages."""
        load_weights(self.model, ckpt["model"], path)
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
        self._apply_configured_lr(ckpt, path)
        set_rng_state(ckpt["rng"])
        if self.logger is not None:  # a rollback; on resume, fit drops them
            self.logger.drop_records_after(self.state.step)
        log.info("resumed from %s at step %d", path, self.state.step)

    def _apply_configured_lr(self, ckpt: dict[str, Any], path: Path | str) -> None:
        """A restored optimizer and scheduler carry the learning rate they were saved with;
        when ``optimizer.lr`` now differs from the one stored with ``ckpt``, rescale both, so
        the schedule (and any rollback cuts) go on from the new rate."""
        stored = (ckpt.get("config") or {}).get("optimizer", {}).get("lr")
        configured = (self.config or {}).get("optimizer", {}).get("lr")
        if stored is None or configured is None or float(stored) == float(configured):
            return
        ratio = float(configured) / float(stored)
        self.scheduler.base_lrs = [lr * ratio for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
        log.info(
            "optimizer.lr is %g where %s was trained with %g: the schedule goes on from %g",
            configured,
            path,
            stored,
            configured,
        )

    def roll_back_to(self, checkpoints: list[Path], factor: float) -> None:
        """Back to the newest readable of ``checkpoints`` (or, before the first, to the
        state the fit started from), with the learning rate cut by ``factor`` once more;
        the counters of skipped steps and rollbacks carry over."""
        state = self.state
        carried = (state.skipped_steps, state.rollbacks + 1, state.lr_scale * factor)
        if checkpoints:
            self.restore(checkpoints)
        else:
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
