"""genflow eval: test metrics of a run's best (or last) checkpoint, as eval.json and one JSON line."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import OmegaConf

from genflow.data.datasets import DatasetNotFound, check_conditions, load_dataset
from genflow.engine.device import resolve_device
from genflow.engine.run_dir import RunDir
from genflow.errors import GenflowError
from genflow.tasks.common import (
    apply_solver_settings,
    evaluation_summary,
    headline,
    load_model_from_checkpoint,
    output_folder,
    write_json,
)
from genflow.validation import validate_eval_config


def run(cfg) -> dict[str, Any]:
    validate_eval_config(cfg)
    run_dir, checkpoint = RunDir.locate(cfg.run, cfg.checkpoint)
    out_dir = output_folder(cfg, run_dir, run_dir.path)  # before the work
    device = resolve_device(cfg.device)
    model, ckpt = load_model_from_checkpoint(checkpoint, device)
    if model.iw_samples is not None:  # VAEs: nll and bpd from the importance-weighted bound
        model.iw_samples = int(cfg.eval.iw_samples)
    apply_solver_settings(
        model, cfg.eval.get("solver"), "solver", "eval.solver", cfg.eval.get("probes")
    )
    dataset_cfg = OmegaConf.create(ckpt["config"]["dataset"])
    if cfg.get("dataset_root"):
        dataset_cfg.root = cfg.dataset_root
    try:
        splits = load_dataset(dataset_cfg)
    except DatasetNotFound as err:  # eval reads what training read: the data moved
        raise GenflowError(
            f"{err.missing}; if it moved since training, pass dataset_root=<the folder that "
            f"holds '{err.folder}'>"
        ) from err
    labels = None
    if model.conditioned_on is not None:  # scored as p(x | y), with the split's labels or contexts
        check_conditions(splits, dataset_cfg, model)
        labels = splits.conditions(cfg.split, model.conditioned_on).to(device)
    data = splits.scored(cfg.split).to(device)
    summary = evaluation_summary(
        model,
        data,
        int(cfg.batch_size),
        checkpoint,
        ckpt["trainer"]["step"],
        cfg.split,
        progress=True,
        labels=labels,
        references=splits.references,
    )
    path = out_dir / run_dir.eval_json(cfg.split, checkpoint.name).name
    write_json(path, summary)
    bound = (
        f" (importance-weighted, {summary['iw_samples']} samples)"
        if "iw_samples" in summary
        else ""
    )
    print(
        f"{cfg.split} {headline(summary)}{bound} over "
        f"{summary['num_examples']} examples, {checkpoint.name} at step {summary['step']}; "
        f"written to {path}",
        flush=True,
    )
    print(json.dumps(summary), flush=True)  # the last line: the summary, for scripts
    return summary
