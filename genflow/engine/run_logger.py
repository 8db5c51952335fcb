"""Where metrics go: ``metrics.jsonl`` in the run directory, and W&B when enabled."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from genflow.engine.files import append_text, write_text
from genflow.engine.run_dir import RunDir
from genflow.errors import GenflowError, first_line

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than dropping them
    return value


def _start_wandb(logger_cfg, **settings):
    """wandb.init, or one sentence saying why W&B did not start and what to do (no API key
    for online mode, a bad WANDB_* environment variable, no network)."""
    import wandb

    try:
        return wandb.init(**settings)
    except Exception as err:  # wandb's own errors, and pydantic's for bad WANDB_* settings
        raise GenflowError(
            f"W&B did not start in logger.mode={logger_cfg.mode} ({first_line(err)}); run `wandb login` "
            "(or set WANDB_API_KEY), or train with logger.mode=offline and `wandb sync` the "
            "run later, or logger=none"
        ) from err


def _task_overrides() -> list[str]:
    """The command line's key=value overrides of this run (none outside a Hydra job)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # no Hydra job (the API, tests): nothing was overridden on a command line
        return []


class RunLogger:
    """Appends one JSON object per event to ``metrics.jsonl``; mirrors to W&B if configured.

    ``logger_cfg.name`` is ``wandb`` or ``none``; W&B runs in ``logger_cfg.mode``
    (offline by default: no account and no network needed) and resumes under ``run_id``.
    With ``write=False`` (DDP ranks other than 0) it records nothing. W&B's config is the
    resolved config plus ``run_dir``; ``monitor`` (metric, ``min`` | ``max``) declares the
    validation metric behind checkpoints/best.pt, so W&B's summary holds its best value.
    """

    def __init__(
        self,
        run_dir: Path,
        logger_cfg,
        config: dict,
        run_id: str | None = None,
        write: bool = True,
        monitor: tuple[str, str] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.path = RunDir(run_dir).metrics
        self.wandb = None
        self.run_id = run_id
        self.write = write
        if (
            write
            and logger_cfg is not None
            and logger_cfg.name == "wandb"
            and logger_cfg.mode != "disabled"
        ):
            self.wandb = _start_wandb(
                logger_cfg,
                project=logger_cfg.project,
                entity=logger_cfg.get("entity"),
                group=logger_cfg.get("group"),
                name=logger_cfg.get("run_name")
                or f"{self.run_dir.parent.name}/{self.run_dir.name}",
                tags=list(logger_cfg.get("tags") or []),
                mode=logger_cfg.mode,
                dir=str(self.run_dir),
                id=run_id,
                resume="allow",
                config={
                    **config,
                    "run_dir": str(self.run_dir.resolve()),
                    "overrides": _task_overrides(),  # a sweep's values, as W&B config keys too
                },
            )
            self.run_id = self.wandb.id
            if monitor is not None:  # the summary keeps the monitored metric's best value
                metric, mode = monitor
                self.wandb.define_metric(f"val/{metric}", summary=mode)

    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.write:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        append_text(self.path, json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(
                {f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")},
                step=step,
            )

    def drop_records_after(self, step: int) -> None:
        """A resumed or rolled-back run repeats the steps after ``step``, and tests again at
        its end: drop those records, and a test record at ``step`` (no duplicate results)."""
        if not self.write or not self.path.exists():
            return

        def stale(record: dict) -> bool:
            return record["step"] > step or (record["split"] == "test" and record["step"] == step)

        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and not stale(json.loads(line))]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def log_image(self, step: int, key: str, path: Path) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Image(str(path))}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.wandb is not None:
            for k, v in metrics.items():
                self.wandb.summary[k] = _plain(v)

    def log_checkpoints(self, files: dict[str, Path]) -> None:
        """Each checkpoint as a version of the W&B Artifact ``model-<run id>`` (type model),
        aliased by its role (``best``, ``latest``); W&B stores a file that did not change once."""
        if self.wandb is None:
            return
        import wandb

        for alias, path in files.items():
            if not path.is_file():
                continue
            artifact = wandb.Artifact(
                f"model-{self.wandb.id}", type="model", metadata={"file": path.name}
            )
            artifact.add_file(str(path))
            self.wandb.log_artifact(artifact, aliases=[alias])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
