"""genflow sample: draw from a run's model; write a PNG (grid or scatter) and the raw tensor."""

from __future__ import annotations

import json
from typing import Any

import torch
from omegaconf import OmegaConf

from genflow.data.datasets import load_dataset
from genflow.engine.device import resolve_device
from genflow.engine.pictures import save_samples
from genflow.errors import GenflowError
from genflow.tasks.common import find_run_checkpoint, load_model_from_checkpoint, run_dir_of


def run(cfg) -> dict[str, Any]:
    s = cfg.sample
    if int(s.n) < 1:
        raise GenflowError(f"sample.n must be a positive integer, got {s.n}")
    if not float(s.temperature) > 0:
        raise GenflowError(f"sample.temperature must be positive, got {s.temperature}")
    checkpoint = find_run_checkpoint(cfg.run, cfg.checkpoint)
    device = resolve_device(cfg.device)
    model, ckpt = load_model_from_checkpoint(checkpoint, device)
    torch.manual_seed(int(s.seed))
    with torch.no_grad():
        chunks = [
            model.sample(min(int(s.batch_size), int(s.n) - start), float(s.temperature))
            for start in range(0, int(s.n), int(s.batch_size))
        ]
    samples = torch.cat(chunks).cpu()
    out_dir = run_dir_of(checkpoint) / "samples"
    stem = f"sample_{checkpoint.stem}_n{s.n}_t{float(s.temperature):g}_seed{s.seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(samples, out_dir / f"{stem}.pt")
    reference = None
    if samples.dim() == 2:  # 2-D data: draw the data beside the samples
        reference = load_dataset(OmegaConf.create(ckpt["config"]["dataset"])).val
    image = save_samples(
        samples, out_dir / f"{stem}.png", getattr(model, "levels", None), reference
    )
    summary = {
        "run": str(run_dir_of(checkpoint)),
        "checkpoint": checkpoint.name,
        "image": str(image),
        "tensor": str(out_dir / f"{stem}.pt"),
        "n": int(s.n),
        "temperature": float(s.temperature),
        "seed": int(s.seed),
    }
    print(json.dumps(summary), flush=True)
    return summary
