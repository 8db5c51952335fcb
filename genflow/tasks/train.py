"""genflow train: fit a model, keep the best checkpoint by validation bpd, test it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from genflow.data.datasets import check_conditions, load_dataset
from genflow.data.tabular import complete_table_config
from genflow.engine.checkpoint import load_checkpoint, load_first_good, stored_model_config
from genflow.engine.device import make_deterministic
from genflow.engine.distributed import DistContext, micro_batch_seed
from genflow.engine.ema import evaluation_weights
from genflow.engine.launch import launch
from genflow.engine.optim import build_optimizer, build_scheduler
from genflow.engine.run_dir import RunDir
from genflow.engine.run_logger import RunLogger
from genflow.engine.train_state import load_weights
from genflow.engine.trainer import Trainer
from genflow.engine.trainer_config import TrainerConfig
from genflow.errors import GenflowError
from genflow.tasks.common import (
    build_model,
    evaluation_summary,
    headline,
    output_dir,
    write_json,
)
from genflow.validation import validate_train_config

log = logging.getLogger(__name__)

# what the final test record in metrics.jsonl carries of eval.json's summary
TEST_RECORD_KEYS = (
    "c2st",
    "bpd",
    "nll",
    "elbo",
    "recon",
    "kl",
    "bpd_median",
    "bpd_p99",
    "bpd_max",
    "worst_index",
    "log_z_bound",
    "log_z",
)


def run(cfg) -> dict[str, Any]:
    complete_table_config(cfg.dataset)
    validate_train_config(cfg)
    run_dir = output_dir()
    with RunDir(run_dir).locked():  # one training process per run directory
        accept(cfg, RunDir(run_dir))
        _group_sweep_runs(cfg)
        if cfg.dataset.get("root"):  # stored absolute: eval and sample work from anywhere
            cfg.dataset.root = str(Path(str(cfg.dataset.root)).expanduser().resolve())
        return launch(cfg, run_dir, train)


def accept(cfg, run: RunDir) -> None:
    """Check that this run may use ``run``, then store its config there (.hydra/): a fresh
    run needs a directory that holds no run; a resume needs a readable checkpoint whose
    weights fit the model config. Nothing in the directory changes when this refuses."""
    run.check_writable()  # its folders inside it, metrics.jsonl and train.log no links
    candidates = run.resume_candidates(cfg.resume)
    if not candidates and run.holds_run():
        raise GenflowError(
            f"run directory {run.path} already holds a run; continue it with "
            f"resume={run.path}, or leave hydra.run.dir out to start a new one"
        )
    if candidates:
        ckpt, path = load_first_good(candidates, quarantine_bad=True)
        trained, asked = stored_model_config(ckpt, path)["_target_"], cfg.model._target_
        if trained != asked:
            name = lambda target: target.rsplit(".", 1)[-1]  # noqa: E731
            raise GenflowError(
                f"resume={cfg.resume}: the run trained {name(trained)}, not {name(asked)}; "
                "a resume continues the same model (drop the model override)"
            )
        load_weights(build_model(cfg.model), ckpt["model"], path)
    run.write_config(cfg, HydraConfig.get())


def train(cfg, run_dir: Path, ctx: DistContext, device: torch.device) -> dict[str, Any]:
    """Build, fit and test on this process; under DDP, as rank ``ctx.rank``."""
    tcfg = TrainerConfig.from_cfg(cfg.trainer)
    if tcfg.deterministic:
        make_deterministic()
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model)  # before loading data: a bad model config fails fast
    splits = load_dataset(cfg.dataset)
    check_conditions(splits, cfg.dataset, model)
    if splits.standardization is not None or splits.context_standardization is not None:
        # a table's training statistics (a resume's checkpoint holds the same values)
        model.set_data_standardization(
            *(splits.standardization or (None, None)),
            *(splits.context_standardization or (None, None)),
        )
    splits = splits.to(device)
    model = model.to(device)
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.optimizer.scheduler, int(cfg.trainer.max_steps))
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer = Trainer(
        tcfg, int(cfg.seed), model, optimizer, scheduler, splits, run_dir, config, ctx
    )

    candidates = RunDir(run_dir).resume_candidates(cfg.resume)
    if candidates:
        trainer.restore(candidates)
    else:
        if cfg.resume == "auto":
            log.info("resume=auto: no earlier run with this config; starting fresh")
        if ctx.is_main:  # data-dependent init (ActNorm); the trainer broadcasts it
            torch.manual_seed(micro_batch_seed(int(cfg.seed), 0))
            model.initialize(*trainer.batches.labeled(0))
    num_params = sum(p.numel() for p in model.parameters())
    log.info(
        "run directory %s; %s on %s (%.2fM parameters) on %s%s",
        run_dir,
        type(model).__name__,
        cfg.dataset.name,
        num_params / 1e6,
        device,
        f", DDP with {ctx.world_size} processes" if ctx.enabled else "",
    )

    logger = RunLogger(
        run_dir,
        cfg.logger,
        config,
        run_id=trainer.state.wandb_id,
        write=ctx.is_main,
        monitor=(str(cfg.trainer.monitor.metric), str(cfg.trainer.monitor.mode)),
    )
    try:
        state = trainer.fit(logger)
        best = RunDir(run_dir).final_checkpoint(state.best_step)
        ckpt = load_checkpoint(best)
        model.load_state_dict(evaluation_weights(ckpt))  # the EMA's, when the run kept one
        summary = evaluation_summary(
            model,
            splits.test,
            int(cfg.trainer.eval_batch_size),
            best,
            ckpt["trainer"]["step"],
            "test",
            ctx=ctx,
            labels=trainer.labels_of("test"),
            references=splits.references,
        )
        logger.log(
            state.step,
            "test",
            {k: summary[k] for k in TEST_RECORD_KEYS if k in summary}
            | {"best_step": summary["step"]},
        )
        logger.summary({f"test/{k}": v for k, v in summary.items() if isinstance(v, float)})
        if cfg.logger.get("log_checkpoints"):
            checkpoints = RunDir(run_dir).checkpoints
            logger.log_checkpoints(
                {"best": checkpoints / "best.pt", "latest": checkpoints / "last.pt"}
            )
        if ctx.is_main:
            write_json(RunDir(run_dir).eval_json(), summary)
    finally:
        logger.close()  # W&B prints its own summary here: the result line comes after it
    for line in result_lines(summary, state, trainer.last_value, tcfg, run_dir, cfg.logger):
        log.info("%s", line)
    return {
        "monitor": tcfg.monitor.metric,
        "best": state.best_metric,  # the best validation value of trainer.monitor.metric
        "test": summary,
        "run_dir": str(run_dir),
    }


def result_lines(summary, state, last_value, tcfg, run_dir: Path, logger_cfg) -> list[str]:
    """What the end of a run says: the test result, where the best step was (and whether
    validation got worse after it), and what to run next."""
    bound = (
        f" from {summary['iw_samples']} importance samples, elbo {summary['elbo']:.2f}"
        if "elbo" in summary
        else ""
    )
    lines = [
        f"test {headline(summary)}{bound} (best checkpoint, step {summary['step']} of "
        f"{state.step}); run directory {run_dir}"
    ]
    monitor = tcfg.monitor
    # a full validation interval after the best step: a last validation a few steps later (a
    # time budget's stop right after a scheduled one) differs by noise, not by overfitting
    later = state.best_step > 0 and state.step - state.best_step >= tcfg.eval_every
    if last_value is not None and later:
        worse = (
            last_value - state.best_metric
            if monitor.mode == "min"
            else state.best_metric - last_value
        )
        if worse > 0:
            lines.append(
                f"validation {monitor.metric} was best at step {state.best_step} "
                f"({state.best_metric:.4f}) and {last_value:.4f} at step {state.step}: the "
                "model got worse after its best step (overfitting, or too high a learning "
                "rate); best.pt keeps the best"
            )
    next_steps = f"next: genflow eval run={run_dir}  |  genflow sample run={run_dir}"
    if logger_cfg.get("name") == "wandb" and logger_cfg.get("mode") == "offline":
        next_steps += f"  |  wandb sync {run_dir}/wandb/offline-run-*"
    lines.append(next_steps)
    return lines


def _group_sweep_runs(cfg) -> None:
    """Every run of a multirun sweep joins one W&B group named after the sweep directory."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and "group" in cfg.logger and not cfg.logger.group:
        cfg.logger.group = Path(hydra_cfg.sweep.dir).name
