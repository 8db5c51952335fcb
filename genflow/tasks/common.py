"""Pieces the train, eval and sample tasks share."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genflow.engine.checkpoint import load_checkpoint, stored_model_config
from genflow.engine.device import describe_hardware
from genflow.engine.distributed import DistContext
from genflow.engine.ema import evaluation_weights
from genflow.engine.evaluate import evaluate
from genflow.engine.files import CannotWrite, probe_folder, write_text
from genflow.engine.run_dir import RunDir
from genflow.engine.train_state import load_weights
from genflow.errors import GenflowError, first_cause
from genflow.models.base import GenerativeModel
from genflow.trust import check_model_config

log = logging.getLogger(__name__)


def output_dir() -> Path:
    """The run directory Hydra chose for this job."""
    return Path(HydraConfig.get().runtime.output_dir)


def build_model(model_cfg, source: str = "the model config") -> GenerativeModel:
    """Instantiate the model from its ``_target_`` config (a DictConfig or a plain dict),
    once genflow.trust has checked that it names only genflow's own classes (``source``, a
    file or "the model config", is named when it does not)."""
    check_model_config(model_cfg, source)
    if not isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.create(model_cfg)
    try:
        return instantiate(model_cfg, _convert_="all")
    except InstantiationException as err:
        raise GenflowError(
            f"could not build model {model_cfg.get('_target_')}: {first_cause(err)}"
        ) from err


def load_model_from_checkpoint(
    checkpoint: Path, device: torch.device
) -> tuple[GenerativeModel, dict]:
    """Rebuild the model from the resolved config stored in the checkpoint and load its weights."""
    ckpt = load_checkpoint(checkpoint)
    model = build_model(stored_model_config(ckpt, checkpoint), f"checkpoint {checkpoint}")
    weights = evaluation_weights(ckpt)  # the EMA's, when the run kept one
    load_weights(
        model, weights, checkpoint, "holds weights that do not fit the model its config describes"
    )
    return model.to(device).eval(), ckpt


def evaluation_summary(
    model: GenerativeModel,
    data: torch.Tensor,
    batch_size: int,
    checkpoint: Path,
    step: int,
    split: str,
    progress: bool = False,
    ctx: DistContext | None = None,
    labels: torch.Tensor | None = None,
    references: list | None = None,
) -> dict[str, Any]:
    """eval.json's content; a conditional model is scored on p(x | y) with ``labels`` (class
    labels or contexts), and the summary says so (``conditional_on``). With an SBI task's
    ``references`` (observation, exact posterior samples), it adds the classifier two-sample
    test of the model's posterior samples against them: ``c2st`` (their mean; 0.5 is
    perfect) and ``c2st_per_observation``, and draws both in ``samples/posterior*.png``."""
    metrics = evaluate(
        model, data, batch_size, progress=progress, ctx=ctx, tails=True, labels=labels
    )
    extra: dict[str, Any] = {}
    run = RunDir.of_checkpoint(checkpoint)
    if references and model.conditioned_on == "context" and (ctx is None or ctx.is_main):
        from genflow.engine.c2st import posterior_c2st
        from genflow.engine.pictures import save_posteriors

        extra["c2st"], scores, draws = posterior_c2st(model, references)
        extra["c2st_per_observation"] = scores
        picture = run.eval_json(split, checkpoint.name).with_suffix(".png").name
        picture = picture.replace("eval", "posterior", 1)
        extra["posterior_picture"] = str(
            save_posteriors(references, draws, scores, run.samples / picture)
        )
    if model.iw_samples is not None:
        extra["iw_samples"] = int(model.iw_samples)
    if model.conditioned_on is not None:
        extra["conditional_on"] = model.conditioned_on
    if hasattr(model, "evaluation_settings"):  # continuous flows: the solver and divergence
        extra.update(model.evaluation_settings())
    extra["hardware"] = describe_hardware(data.device)
    return {
        "run": str(run.path),
        "model": type(model).__name__,
        "overrides": run.stored_overrides(),
        "checkpoint": checkpoint.name,
        "step": int(step),
        "split": split,
        "num_examples": len(data),
        **extra,
        **metrics,
    }


def apply_solver_settings(model, overrides, which: str, key: str, probes=None) -> None:
    """``eval.solver`` / ``sample.solver`` (each non-null key replaces the run's) and
    ``eval.probes`` for a continuous flow; one sentence where they cannot apply."""
    changes = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    if not changes and probes is None:
        return
    from genflow.models.cnf import CNF

    if not isinstance(model, CNF):
        used = key if changes else key.rsplit(".", 1)[0] + ".probes"
        raise GenflowError(
            f"{used} applies to continuous flows (model=cnf); this run's model is "
            f"{type(model).__name__}"
        )
    try:
        model.override_solver(which, changes, key)
    except ValueError as err:
        raise GenflowError(str(err)) from err
    if probes is not None:
        if model.flow.divergence_kind != "hutchinson":
            raise GenflowError(
                f"{key.rsplit('.', 1)[0]}.probes applies to Hutchinson's divergence; this run's "
                "divergence is the exact trace (no probes, no standard error to report)"
            )
        model.flow.probes = int(probes)


def output_folder(cfg, run_dir, default: Path) -> Path:
    """Where eval / sample write: ``out=<folder>`` when given (a run that cannot or should not
    be written to), else ``default`` inside the run, whose folders must stay inside it; either
    is checked to be writable before the work, and a run that is not says how to go on."""
    if cfg.get("out"):
        return probe_folder(Path(str(cfg.out)).expanduser())
    run_dir.check_writable(appends=False)
    try:
        return probe_folder(default)
    except CannotWrite as err:
        raise GenflowError(
            f"{err}; pass out=<folder> to write this command's outputs there"
        ) from err


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def headline(summary: dict[str, Any]) -> str:
    """The main figures of an evaluation summary, in words."""
    if "bpd" in summary:
        given = {
            "class": " given the class (log p(x | y))",
            "context": " given the context (log p(x | c))",
        }.get(summary.get("conditional_on"), "")
        c2st = f", c2st {summary['c2st']:.3f}" if "c2st" in summary else ""
        se = f" (probes' s.e. {summary['nll_se']:.2f})" if "nll_se" in summary else ""
        nfe = f", {summary['nfe']:.0f} NFE" if "nfe" in summary else ""  # continuous-time flows
        return f"bpd {summary['bpd']:.4f}, nll {summary['nll']:.2f} nats{se}{given}{nfe}{c2st}"
    # a flow fitted to an energy (model=energy_flow): the bound on log Z and the KL
    return (
        f"log Z bound {summary['log_z_bound']:.4f} (grid log Z {summary['log_z']:.4f}), "
        f"KL(q || p) {summary['kl']:.4f} nats"
    )
