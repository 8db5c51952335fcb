"""The trainer's settings, typed and built once from ``cfg.trainer``.

The defaults live in conf/trainer/default.yaml and nowhere else: a config that lacks a key
is an error here, not a silent Python default. ``validation.py`` has already checked each
value's range by the time a run builds one of these.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from genflow.errors import GenflowError

MONITOR_MODES = ("min", "max")


@dataclass(frozen=True)
class Monitor:
    """The validation metric that picks checkpoints/best.pt, counts trainer.patience, and is
    what ``genflow train`` returns to a sweeper; ``mode`` says whether lower or higher wins."""

    metric: str
    mode: str

    def better(self, value: float, best: float) -> bool:
        return value < best if self.mode == "min" else value > best

    @property
    def worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int
    max_minutes: float | None
    batch_size: int
    accumulate_steps: int
    eval_batch_size: int
    log_every: int
    eval_every: int
    ckpt_every: int
    sample_every: int
    sample_n: int
    grad_clip: float  # inf: no clipping
    grad_skip: float  # inf: no step is skipped for the size of its gradient
    channels_last: bool
    compile: bool
    precision: str
    deterministic: bool
    ema: float | None
    patience: int | None
    progress_bar: bool
    monitor: Monitor
    max_bad_steps: int
    on_bad_steps: str
    rollback_lr_factor: float
    max_rollbacks: int
    nan_loss_at_steps: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def keys(cls) -> set[str]:
        """The keys of ``cfg.trainer`` (conf/trainer/default.yaml), no more and no fewer."""
        return ({f.name for f in dataclasses.fields(cls)} - {"nan_loss_at_steps"}) | {
            "fault_injection"
        }

    @classmethod
    def from_cfg(cls, trainer: DictConfig | dict) -> TrainerConfig:
        t = (
            OmegaConf.to_container(trainer, resolve=True)
            if isinstance(trainer, DictConfig)
            else dict(trainer)
        )
        missing = sorted(cls.keys() - set(t))
        if missing:
            raise GenflowError(
                f"the trainer config lacks {', '.join('trainer.' + k for k in missing)} "
                "(conf/trainer/default.yaml holds every key)"
            )
        optional = lambda v, kind: None if v is None else kind(v)  # noqa: E731
        faults = t["fault_injection"] or {}
        return cls(
            max_steps=int(t["max_steps"]),
            max_minutes=optional(t["max_minutes"], float),
            batch_size=int(t["batch_size"]),
            accumulate_steps=int(t["accumulate_steps"]),
            eval_batch_size=int(t["eval_batch_size"]),
            log_every=int(t["log_every"]),
            eval_every=int(t["eval_every"]),
            ckpt_every=int(t["ckpt_every"]),
            sample_every=int(t["sample_every"] or 0),
            sample_n=int(t["sample_n"]),
            grad_clip=float(t["grad_clip"]) if t["grad_clip"] else math.inf,
            grad_skip=float(t["grad_skip"]) if t.get("grad_skip") else math.inf,
            channels_last=bool(t["channels_last"]),
            compile=bool(t["compile"]),
            precision=str(t["precision"]),
            deterministic=bool(t.get("deterministic", False)),
            ema=optional(t["ema"], float),
            patience=optional(t["patience"], int) or None,
            progress_bar=bool(t["progress_bar"]),
            monitor=Monitor(str(t["monitor"]["metric"]), str(t["monitor"]["mode"])),
            max_bad_steps=int(t["max_bad_steps"]),
            on_bad_steps=str(t["on_bad_steps"]),
            rollback_lr_factor=float(t["rollback_lr_factor"]),
            max_rollbacks=int(t["max_rollbacks"]),
            nan_loss_at_steps=frozenset(int(s) for s in (faults.get("nan_loss_at_steps") or [])),
        )
